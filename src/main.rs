//! `contextual-attention`: the layer on bundled images (`demo`, the default), on tensors
//! (`attend`), on the user's images (`reconstruct`, `fill`), a GPU-vs-CPU benchmark (`bench`)
//! the tiles and buffers a call would use (`plan`) and the adapters wgpu sees (`adapters`).

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "contextual-attention",
    version,
    about = "Contextual attention (Yu et al. 2018) on wgpu: demo, tensors in and out, benchmark"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Reconstruction and hole filling on the bundled images; writes PNGs into ./out (the default command).
    Demo(cli::demo::DemoArgs),
    /// The layer on .npy tensors (NHWC float32).
    Attend(cli::attend::AttendArgs),
    /// Rebuild a target image from the patches of a source image.
    Reconstruct(cli::images::ReconstructArgs),
    /// Fill the hole of an image (mask: white = hole) from the rest of it.
    Fill(cli::images::FillArgs),
    /// GPU against the CPU twin on standard sizes.
    Bench(cli::bench::BenchArgs),
    /// The tiles and every buffer the GPU path would allocate, without running.
    Plan(cli::plan::PlanArgs),
    /// List the adapters wgpu sees.
    Adapters,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Demo(cli::demo::DemoArgs::default())) {
        Command::Demo(a) => cli::demo::run(a),
        Command::Attend(a) => cli::attend::run(a),
        Command::Reconstruct(a) => cli::images::reconstruct(a),
        Command::Fill(a) => cli::images::fill(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Plan(a) => cli::plan::run(a),
        Command::Adapters => cli::adapters(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
