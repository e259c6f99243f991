//! criterion benches: the standard sizes (`contextual_attention::bench::standard_cases`) on the
//! three backends: the GPU, the fast CPU path and the CPU twin (the twin on the first size
//! only: it takes minutes on the others). `cargo bench` prints the adapter first; on a software
//! Vulkan the GPU times say nothing about GPUs. `CA_BENCH_NO_GPU=1` skips the GPU,
//! `CA_BENCH_NO_REFERENCE=1` the twin.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use contextual_attention::bench::standard_cases;
use contextual_attention::{Backend, ContextualAttention, Geometry, Gpu};

fn layer(c: &mut Criterion) {
    let skip = |name: &str| std::env::var(name).as_deref() == Ok("1");
    let gpu = (!skip("CA_BENCH_NO_GPU")).then(|| {
        let gpu = Gpu::new()
            .expect("a wgpu adapter (or a software Vulkan: apt-get install mesa-vulkan-drivers libvulkan1), or CA_BENCH_NO_GPU=1");
        eprintln!("adapter: {}", gpu.describe());
        gpu
    });
    let mut group = c.benchmark_group("contextual_attention");
    group.sample_size(10);
    for (n, case) in standard_cases().into_iter().enumerate() {
        let (x, mask) = case.inputs();
        let g = Geometry::new(&case.params, x.shape(), x.shape(), mask.as_ref().map(|m| m.shape())).unwrap();
        group.throughput(Throughput::Elements(g.flops() as u64)); // elements = FLOPs (SPEC §2.13)
        let mut backends = vec![("cpu", Backend::Cpu)];
        if let Some(gpu) = &gpu {
            backends.insert(0, ("gpu", Backend::Gpu(gpu.clone())));
        }
        if n == 0 && !skip("CA_BENCH_NO_REFERENCE") {
            backends.push(("reference", Backend::Reference));
        }
        for (name, backend) in backends {
            let layer = ContextualAttention::with_backend(backend, case.params.clone()).unwrap();
            group.bench_with_input(BenchmarkId::new(name, case.size_label()), &case, |bch, _| {
                bch.iter(|| layer.forward(&x, &x, mask.as_ref()).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, layer);
criterion_main!(benches);
