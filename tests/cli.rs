//! The command-line program: .npy round trip on both backends, the demo's files, and every
//! error of the program as a one-line message with a non-zero exit and no partial output.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use contextual_attention::{io, ContextualAttention, Params};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_contextual-attention"));
    c.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    c
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ca-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("the program runs");
    eprintln!("stdout: {}\nstderr: {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

/// Asserts a failure whose `error:` line contains every one of `needles`.
fn assert_fails(out: &Output, needles: &[&str]) {
    assert!(!out.status.success(), "expected a failure");
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().rfind(|l| l.starts_with("error:") && !l.contains("XDG_RUNTIME_DIR")).unwrap_or_default();
    for n in needles {
        assert!(line.contains(n), "error line {line:?} does not mention {n:?}");
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn write_inputs(dir: &Path, rng: &mut common::Rng) -> (PathBuf, PathBuf, PathBuf) {
    let f = rng.tensor([2, 12, 16, 3], -1.0, 1.0);
    let b = rng.tensor([2, 16, 12, 3], -1.0, 1.0);
    let m = rng.hole(1, 16, 12);
    let paths = (dir.join("f.npy"), dir.join("b.npy"), dir.join("m.npy"));
    io::write_npy_f32(&paths.0, &f.shape(), f.data()).unwrap();
    io::write_npy_f32(&paths.1, &b.shape(), b.data()).unwrap();
    io::write_npy_f32(&paths.2, &m.shape(), m.data()).unwrap();
    (paths.0, paths.1, paths.2)
}

#[test]
fn attend_round_trip_on_every_backend_agrees_with_the_library() {
    let _ = gpu_or_skip!();
    let dir = tmp("attend");
    let mut rng = common::Rng::new("attend");
    let (f, b, m) = write_inputs(&dir, &mut rng);
    for backend in ["gpu", "cpu", "reference"] {
        let o = |n: &str| dir.join(format!("{n}_{backend}.{}", if n == "flow" { "png" } else { "npy" }));
        let out = run(bin()
            .args(["attend", "--f"])
            .arg(&f)
            .arg("--b")
            .arg(&b)
            .arg("--mask")
            .arg(&m)
            .args(["--rate", "2", "--fuse-k", "3", "--softmax-scale", "10", "--backend", backend, "--out-y"])
            .arg(o("y"))
            .arg("--out-offsets")
            .arg(o("offsets"))
            .arg("--out-mass")
            .arg(o("mass"))
            .arg("--out-flow")
            .arg(o("flow"))
            .arg("--out-attention")
            .arg(o("attention"))
            .args(["--queries", "0,0;3,5"]));
        assert!(out.status.success(), "attend on {backend} failed");
    }
    let read = |p: PathBuf| io::read_npy(&p).unwrap();
    let (yg, yc, yr) = (read(dir.join("y_gpu.npy")), read(dir.join("y_cpu.npy")), read(dir.join("y_reference.npy")));
    assert_eq!(yg.shape, vec![2, 12, 16, 3]);
    let (io::NpyData::F32(yg), io::NpyData::F32(yc), io::NpyData::F32(yr)) = (yg.data, yc.data, yr.data) else {
        panic!("y must be float32")
    };
    common::assert_close("y gpu vs reference", &yg, &common::to_f64(&yr), 1e-5, 1e-4);
    common::assert_close("y cpu vs reference", &yc, &common::to_f64(&yr), 1e-5, 1e-4);
    let og = read(dir.join("offsets_gpu.npy"));
    assert_eq!(og.shape, vec![2, 6, 8, 2]);
    assert!(matches!(og.data, io::NpyData::I32(_)), "offsets must be int32");
    assert_eq!(read(dir.join("mass_gpu.npy")).shape, vec![2, 6, 8]);
    assert_eq!(read(dir.join("attention_gpu.npy")).shape, vec![2, 2, 8, 6]);
    // One flow image per batch item.
    for n in 0..2 {
        let p = dir.join(format!("flow_gpu_{n}.png"));
        assert!(p.exists(), "{} missing", p.display());
        assert_eq!(image::image_dimensions(&p).unwrap(), (16, 12));
    }
    // The library gives the same y as the program.
    let (ft, bt, mt) = (
        io::read_tensor_npy(&f, "f").unwrap(),
        io::read_tensor_npy(&b, "b").unwrap(),
        io::read_tensor_npy(&m, "mask").unwrap(),
    );
    let params = Params { rate: 2, ..Default::default() };
    let lib = ContextualAttention::reference(params.clone()).unwrap().forward(&ft, &bt, Some(&mt)).unwrap();
    common::assert_close("program vs library, reference", &yr, &common::to_f64(lib.y.data()), 0.0, 0.0);
    let lib = ContextualAttention::cpu(params).unwrap().forward(&ft, &bt, Some(&mt)).unwrap();
    common::assert_close("program vs library, cpu", &yc, &common::to_f64(lib.y.data()), 0.0, 0.0);
}

#[test]
fn attend_errors_are_one_line_and_leave_no_files() {
    let dir = tmp("errors");
    let mut rng = common::Rng::new("errors");
    let (f, b, _) = write_inputs(&dir, &mut rng);
    let out_dir = dir.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let y = out_dir.join("y.npy");
    let attend = |extra: &[&str], f: &Path, b: &Path| {
        let mut c = bin();
        c.args(["attend", "--backend", "cpu", "--f"]).arg(f).arg("--b").arg(b).arg("--out-y").arg(&y).args(extra);
        run(&mut c)
    };
    // missing file
    assert_fails(&attend(&[], &dir.join("missing.npy"), &b), &["missing.npy", "No such file"]);
    // wrong dtype
    io::write_npy_i32(&dir.join("int.npy"), &[1, 4, 4, 1], &[0; 16]).unwrap();
    assert_fails(&attend(&[], &dir.join("int.npy"), &b), &["int.npy", "float"]);
    // wrong rank
    io::write_npy_f32(&dir.join("rank3.npy"), &[4, 4, 1], &[0.0; 16]).unwrap();
    assert_fails(&attend(&[], &dir.join("rank3.npy"), &b), &["4 dimensions", "[4, 4, 1]"]);
    // not divisible by the rate
    assert_fails(&attend(&["--rate", "5"], &f, &b), &["not divisible by rate 5"]);
    // channel mismatch
    io::write_npy_f32(&dir.join("c1.npy"), &[2, 16, 12, 1], &vec![0.5; 2 * 16 * 12]).unwrap();
    assert_fails(&attend(&[], &f, &dir.join("c1.npy")), &["channels"]);
    // bad mask shape
    io::write_npy_f32(&dir.join("badmask.npy"), &[1, 8, 8, 1], &[0.0; 64]).unwrap();
    assert_fails(&attend(&["--mask", dir.join("badmask.npy").to_str().unwrap()], &f, &b), &["mask"]);
    // a folder that does not exist, checked before any work
    let mut c = bin();
    c.args(["attend", "--backend", "cpu", "--f"])
        .arg(&f)
        .arg("--b")
        .arg(&b)
        .arg("--out-y")
        .arg(dir.join("nowhere/y.npy"));
    assert_fails(&run(&mut c), &["does not exist"]);
    // bad --queries
    assert_fails(&attend(&["--queries", "1,x", "--out-attention", "a.npy"], &f, &b), &["--queries"]);
    assert_fails(
        &attend(&["--queries", "99,0", "--out-attention", out_dir.join("a.npy").to_str().unwrap()], &f, &b),
        &["outside"],
    );
    // bad parameter
    assert_fails(&attend(&["--rate", "2", "--paste-kernel", "1"], &f, &b), &["paste_kernel"]);
    // Nothing was written by any failed run, not even a temporary file.
    assert_eq!(files_in(&out_dir), Vec::<String>::new());
}

#[test]
fn no_adapter_is_a_clear_error_suggesting_the_cpu_backend() {
    let dir = tmp("noadapter");
    let mut rng = common::Rng::new("noadapter");
    let (f, b, _) = write_inputs(&dir, &mut rng);
    let out = run(bin()
        .env("WGPU_ADAPTER_NAME", "no-such-adapter-anywhere")
        .args(["attend", "--f"])
        .arg(&f)
        .arg("--b")
        .arg(&b)
        .arg("--out-y")
        .arg(dir.join("y.npy")));
    assert_fails(&out, &["no GPU adapter", "--backend cpu", "mesa-vulkan-drivers"]);
    assert!(!dir.join("y.npy").exists());
}

#[test]
fn demo_writes_its_pictures_and_reports_the_comparison() {
    let _ = gpu_or_skip!();
    let dir = tmp("demo");
    let out = run(bin().args(["demo", "--size", "32", "--out"]).arg(&dir));
    assert!(out.status.success(), "demo failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("adapter:"), "the demo names the adapter");
    for run in ["reconstruction:", "hole filling:", "identity_exact_r3k4:"] {
        let line = stdout.lines().find(|l| l.starts_with(run)).unwrap_or_else(|| panic!("no {run} line"));
        assert!(line.contains("max |GPU − CPU|"), "{run} is compared with the CPU twin: {line}");
    }
    for name in ["identity_quarter_r2k4", "identity_quarter_r3k4", "identity_exact_r3k4"] {
        assert!(dir.join(format!("{name}.png")).is_file(), "{name}.png missing");
    }
    for name in ["reconstruction", "reconstruction_flow", "fill_input", "fill_coarse", "fill_result", "fill_flow"] {
        let p = dir.join(format!("{name}.png"));
        let img = image::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(img.width() > 0 && img.height() > 0);
    }
    // The hole is filled: the result differs from the white-holed input inside the hole.
    let input = image::open(dir.join("fill_input.png")).unwrap().to_luma8();
    let result = image::open(dir.join("fill_result.png")).unwrap().to_luma8();
    let (w, h) = input.dimensions();
    let centre = (w / 2, h / 2);
    assert_eq!(input.get_pixel(centre.0, centre.1).0[0], 255, "the input shows the hole in white");
    assert_ne!(result.get_pixel(centre.0, centre.1).0[0], 255, "the result fills it");
}

#[test]
fn fill_and_reconstruct_run_on_user_images() {
    let dir = tmp("images");
    let img =
        image::RgbImage::from_fn(24, 20, |x, y| image::Rgb([(x * 10) as u8, (y * 12) as u8, ((x + y) * 5) as u8]));
    img.save(dir.join("img.png")).unwrap();
    let mask = image::GrayImage::from_fn(24, 20, |x, y| {
        image::Luma([if (8..14).contains(&x) && (6..12).contains(&y) { 255 } else { 0 }])
    });
    mask.save(dir.join("mask.png")).unwrap();
    let out = run(bin()
        .args(["fill", "--backend", "cpu", "--image"])
        .arg(dir.join("img.png"))
        .arg("--mask")
        .arg(dir.join("mask.png"))
        .arg("--out")
        .arg(dir.join("filled.png")));
    assert!(out.status.success());
    assert_eq!(image::image_dimensions(dir.join("filled.png")).unwrap(), (24, 20));
    let out = run(bin()
        .args(["reconstruct", "--backend", "cpu", "--source"])
        .arg(dir.join("img.png"))
        .arg("--target")
        .arg(dir.join("img.png"))
        .arg("--out")
        .arg(dir.join("rec.png"))
        .arg("--flow")
        .arg(dir.join("flow.png")));
    assert!(out.status.success());
    assert_eq!(image::image_dimensions(dir.join("flow.png")).unwrap(), (24, 20));
    // a mask of another size is refused
    let small = image::GrayImage::new(10, 10);
    small.save(dir.join("small.png")).unwrap();
    let out = run(bin()
        .args(["fill", "--backend", "cpu", "--image"])
        .arg(dir.join("img.png"))
        .arg("--mask")
        .arg(dir.join("small.png"))
        .arg("--out")
        .arg(dir.join("bad.png")));
    assert_fails(&out, &["same size"]);
    assert!(!dir.join("bad.png").exists());
    // a hole covering everything is refused, and nothing is written
    image::GrayImage::from_pixel(24, 20, image::Luma([255])).save(dir.join("all.png")).unwrap();
    let out = run(bin()
        .args(["fill", "--backend", "cpu", "--image"])
        .arg(dir.join("img.png"))
        .arg("--mask")
        .arg(dir.join("all.png"))
        .arg("--out")
        .arg(dir.join("bad.png")));
    assert_fails(&out, &["whole image", "nothing to copy from"]);
    assert!(!dir.join("bad.png").exists());
    // an empty hole writes the image unchanged and says so
    image::GrayImage::new(24, 20).save(dir.join("none.png")).unwrap();
    let out = run(bin()
        .args(["fill", "--backend", "cpu", "--image"])
        .arg(dir.join("img.png"))
        .arg("--mask")
        .arg(dir.join("none.png"))
        .arg("--out")
        .arg(dir.join("same.png")));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no hole pixel"));
    assert_eq!(image::open(dir.join("same.png")).unwrap().to_rgb8(), img);
}

#[test]
fn fill_removes_a_hole_from_the_bundled_brick_photo() {
    let dir = tmp("fill-brick");
    let brick = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/brick.png");
    let original = image::open(&brick).unwrap().to_luma8();
    let (w, h) = original.dimensions();
    // A free-form hole: two thick strokes (any non-black pixel of the mask is hole).
    let in_hole = |x: u32, y: u32| {
        (200..260).contains(&x) && (180..300).contains(&y) || (300..420).contains(&x) && (100..124).contains(&y)
    };
    image::GrayImage::from_fn(w, h, |x, y| image::Luma([if in_hole(x, y) { 7 } else { 0 }]))
        .save(dir.join("mask.png"))
        .unwrap();
    let out = run(bin()
        .args(["fill", "--backend", "cpu", "--image"])
        .arg(&brick)
        .arg("--mask")
        .arg(dir.join("mask.png"))
        .arg("--out")
        .arg(dir.join("filled.png"))
        .arg("--coarse")
        .arg(dir.join("coarse.png")));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("layer calls"), "reports its work");
    let filled = image::open(dir.join("filled.png")).unwrap();
    assert_eq!(filled.color(), image::ColorType::L8, "a grey photo stays grey");
    let filled = filled.to_luma8();
    let (mut changed, mut hole) = (0, 0);
    for (x, y, p) in original.enumerate_pixels() {
        let q = filled.get_pixel(x, y);
        if in_hole(x, y) {
            hole += 1;
            changed += (p != q) as usize;
        } else {
            assert_eq!(p, q, "pixel ({x}, {y}) outside the hole changed");
        }
    }
    // The fill is not the original, but not white or black either: bricks and mortar.
    assert!(changed > hole / 2, "only {changed} of {hole} hole pixels differ from the photo");
    let mean = (0..w)
        .flat_map(|x| (0..h).map(move |y| (x, y)))
        .filter(|&(x, y)| in_hole(x, y))
        .map(|(x, y)| filled.get_pixel(x, y).0[0] as f64)
        .sum::<f64>()
        / hole as f64;
    let photo_mean = original.pixels().map(|p| p.0[0] as f64).sum::<f64>() / (w * h) as f64;
    assert!((mean - photo_mean).abs() < 30.0, "hole mean {mean:.0} vs photo mean {photo_mean:.0}");
    assert!(dir.join("coarse.png").is_file());
}

#[test]
fn bench_rows_name_backend_peak_fraction_and_memory() {
    let out = run(bin().args(["bench", "--quick", "--json", "--backend", "reference,cpu", "--case", "16x12x4:2"]));
    assert!(out.status.success(), "bench failed");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bench --json prints JSON");
    let rows = rows.as_array().expect("an array of rows");
    assert_eq!(rows.len(), 2, "one row per backend");
    assert_eq!(rows[0]["backend"], "reference");
    assert_eq!(rows[1]["backend"], "cpu");
    for row in rows {
        assert_eq!(row["size"], "16x12x4 r2");
        assert!(row["median_ms"].as_f64().unwrap() > 0.0 && row["gflops"].as_f64().unwrap() > 0.0, "{row}");
        for key in ["peak_fraction", "peak_rss_mb", "op_mb"] {
            assert!(row.get(key).is_some(), "{key} missing from {row}");
        }
        if cfg!(target_os = "linux") {
            assert!(row["peak_rss_mb"].as_f64().unwrap() > 0.0, "{row}");
        }
    }
    // The CPU row is compared with the reference that ran before it.
    assert!(rows[1]["max_abs_err"].as_f64().unwrap() < 1e-4, "{}", rows[1]);
    let bad = run(bin().args(["bench", "--case", "16x12:2"]));
    assert_fails(&bad, &["16x12:2", "HxWxC:RATE"]);
}

#[test]
fn plan_lists_every_buffer_within_the_binding_limit() {
    // No device needed: 1080p model features at rate 2 within WebGPU's 128 MiB binding.
    let out = run(bin().args(["plan", "--f-shape", "1,270,480,96", "--rate", "2", "--max-binding", "128", "--json"]));
    assert!(out.status.success(), "plan failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan --json prints JSON");
    let buffers = v["buffers"].as_array().expect("a list of buffers");
    let working: Vec<&serde_json::Value> = buffers.iter().filter(|b| b["kind"] == "working").collect();
    let total: u64 = working.iter().map(|b| b["bytes"].as_u64().unwrap()).sum();
    assert_eq!(Some(total), v["working_bytes"].as_u64(), "working_bytes is the sum of the working buffers");
    assert!(total <= v["budget_bytes"].as_u64().unwrap(), "working set {total} over the budget");
    for b in &working {
        assert!(b["bytes"].as_u64().unwrap() <= 128 << 20, "{b} over the 128 MiB binding");
    }
    for name in ["f", "b", "y", "scores", "raw patches", "pasted columns", "index tables"] {
        assert!(buffers.iter().any(|b| b["name"] == name), "{name} missing from {buffers:?}");
    }
    assert!(v["tiles"]["query"]["count"].as_u64().unwrap() > 1 && v["tiles"]["keys"]["count"].as_u64().unwrap() > 1);
    let text = run(bin().args(["plan", "--f-shape", "1,64,64,32", "--rate", "2"]));
    assert!(String::from_utf8_lossy(&text.stdout).contains("working set"));
    assert_fails(&run(bin().args(["plan", "--f-shape", "1,64,64"])), &["1,64,64", "B,H,W,C"]);
    assert_fails(
        &run(bin().args(["plan", "--f-shape", "1,64,64,32", "--rate", "2", "--memory-budget", "0"])),
        &["memory"],
    );
}

#[test]
fn bench_names_the_gemm_variant_and_ca_gemm_variant_forces_one() {
    let _gpu = gpu_or_skip!();
    let args = ["bench", "--quick", "--backend", "gpu", "--case", "16x12x4:2"];
    let out = run(bin().env("CA_GEMM_VARIANT", "128x64-bk16").args(args));
    assert!(out.status.success(), "bench failed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("| 128x64-bk16 | forced by CA_GEMM_VARIANT |"), "{text}");
    let bad = run(bin().env("CA_GEMM_VARIANT", "huge").args(args));
    assert_fails(&bad, &["CA_GEMM_VARIANT", "huge", "64x64-bk16"]);
}
