#!/usr/bin/env bash
# The GPU check for a session that is lent a real GPU (the `device` tool): one call that names the
# card and driver, checks the layer against the CPU twin and the goldens there, and benchmarks.
#
# Prepare here (once per session):
#   cargo build --release --bin contextual-attention && cargo test --release --no-run
#   scripts/gpu-check.sh --stage      # copies the release binary and test binaries into .gpu/
#   (and the Vulkan loader .debs into .gl/, see the device tool's README)
# Then run there with carry [".gl", ".gpu"] and the command `bash scripts/gpu-check.sh`.
# Results land in $OUT (at most 8 files come back): adapters.txt, tests.log, demo.txt, bench.md,
# bench.json, plan.txt. Ran end to end on an NVIDIA H200 (Vulkan, driver 580.159.04) on 2026-12-04 in 41 s.
set -uo pipefail
if [ "${1:-}" = "--stage" ]; then
    rm -rf .gpu && mkdir -p .gpu
    cp target/release/contextual-attention .gpu/
    for t in golden layer stages extended tiling api cpu; do
        f=$(ls -t target/release/deps/$t-* 2>/dev/null | grep -v '\.d$' | head -1)
        [ -n "$f" ] && cp "$f" ".gpu/test-$t"
    done
    # The device call carries at most 64 MiB: strip and compress the binaries.
    strip .gpu/* 2>/dev/null || true
    (cd .gpu && tar -cJf bins.tar.xz contextual-attention test-* && rm -f contextual-attention test-*)
    grep -qx '/.gpu/' .git/info/exclude || echo /.gpu/ >> .git/info/exclude
    ls -la .gpu
    exit 0
fi
[ -f .gpu/bins.tar.xz ] && (cd .gpu && tar -xJf bins.tar.xz)
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
for f in .gl/*.deb; do [ -e "$f" ] && dpkg -x "$f" /; done
ldconfig 2>/dev/null || true
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
B=.gpu/contextual-attention
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUT/adapters.txt"
$B adapters 2>&1 | tee -a "$OUT/adapters.txt"
# The test binaries read fixtures relative to the crate root they were built in; run from here.
for t in .gpu/test-*; do
    echo "== $t" >> "$OUT/tests.log"
    CARGO_MANIFEST_DIR=$PWD timeout 240 "$t" --test-threads 4 >> "$OUT/tests.log" 2>&1 || echo "FAILED: $t" | tee -a "$OUT/tests.log"
done
grep -E "test result|FAILED" "$OUT/tests.log"
# The tiles and buffers of 1080p and 4K model features within WebGPU's 128 MiB binding.
for shape in 1,270,480,96 1,540,960,96; do
    $B plan --f-shape $shape --rate 2 --max-binding 128 2>&1 | tee -a "$OUT/plan.txt"
done
$B demo --out /tmp/gpu-check-demo > "$OUT/demo.txt" 2>&1; cat "$OUT/demo.txt"
# The reference (f64 twin) runs once per case, to give every row its error; the largest case
# (893 GFLOP) without it, to keep the call short.
$B bench --repeats 7 --backend reference,gpu,cpu --case 64x64x128:2 --case 128x128x64:2 2>&1 | tee "$OUT/bench.md"
$B bench --repeats 3 --backend gpu,cpu --case 128x128x128:1 2>&1 | tee -a "$OUT/bench.md"
$B bench --repeats 7 --backend gpu,cpu --json > "$OUT/bench.json" 2>/dev/null
