//! criterion benches: the standard sizes (`contextual_attention::bench::standard_cases`) on the
//! GPU and on the CPU twin. `cargo bench` prints the adapter first; on a software Vulkan the GPU
//! times say nothing about GPUs. `CA_BENCH_NO_CPU=1` skips the (slow) CPU twin.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use contextual_attention::bench::standard_cases;
use contextual_attention::{ContextualAttention, Geometry, Gpu};

fn layer(c: &mut Criterion) {
    let gpu =
        Gpu::new().expect("a wgpu adapter (or a software Vulkan: apt-get install mesa-vulkan-drivers libvulkan1)");
    eprintln!("adapter: {}", gpu.describe());
    let skip_cpu = std::env::var("CA_BENCH_NO_CPU").as_deref() == Ok("1");
    let mut group = c.benchmark_group("contextual_attention");
    group.sample_size(10);
    for case in standard_cases() {
        let (x, mask) = case.inputs();
        let g = Geometry::new(&case.params, x.shape(), x.shape(), mask.as_ref().map(|m| m.shape())).unwrap();
        group.throughput(Throughput::Elements(g.flops() as u64)); // elements = FLOPs (SPEC §2.13)
        let on_gpu = ContextualAttention::new(&gpu, case.params.clone()).unwrap();
        group.bench_with_input(BenchmarkId::new("gpu", case.size_label()), &case, |bch, _| {
            bch.iter(|| on_gpu.forward(&x, &x, mask.as_ref()).unwrap())
        });
        if !skip_cpu {
            let on_cpu = ContextualAttention::reference(case.params.clone()).unwrap();
            group.bench_with_input(BenchmarkId::new("cpu-twin", case.size_label()), &case, |bch, _| {
                bch.iter(|| on_cpu.forward(&x, &x, mask.as_ref()).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, layer);
criterion_main!(benches);
