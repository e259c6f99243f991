"""The Python package against the original's goldens (G1-G8), against the command-line program,
and its errors. GPU tests need an adapter (CI installs the software Vulkan) and fail when there
is none, unless CA_SKIP_GPU_TESTS=1 says to skip them."""

import json
import os
import pathlib
import subprocess
import tempfile
import threading
import time

import numpy as np
import pytest

import contextual_attention as ca

REPO = pathlib.Path(__file__).resolve().parents[2]
GOLDENS = json.loads((REPO / "tests" / "fixtures" / "contextual_attention_g1_g8.json").read_text())["cases"]
SKIP_GPU = os.environ.get("CA_SKIP_GPU_TESTS") == "1"
BACKENDS = ["cpu", "reference"] + ([] if SKIP_GPU else ["gpu"])


def pattern(shape):
    """The goldens' input: ((7y + 3x + 5c + 11n) mod 13 - 6) / 8 (see the fixture's description)."""
    n, y, x, c = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    return (((7 * y + 3 * x + 5 * c + 11 * n) % 13 - 6) * 0.125).astype(np.float32)


def golden_mask(case):
    if case["mask_rect"] is None:
        return None
    _, h, w, _ = case["input_shape"]
    y0, y1, x0, x1 = case["mask_rect"]
    m = np.zeros((1, h, w, 1), np.float32)
    m[:, y0:y1, x0:x1, :] = 1
    return m


def test_adapters_are_listed():
    names = ca.adapters()
    if SKIP_GPU:
        pytest.skip("CA_SKIP_GPU_TESTS=1")
    assert names, "no wgpu adapter: install a GPU driver or the software Vulkan (mesa-vulkan-drivers), or set CA_SKIP_GPU_TESTS=1"
    print("adapters:", names)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", GOLDENS, ids=[c["name"] for c in GOLDENS])
def test_goldens(case, backend):
    x = pattern(case["input_shape"])
    out = ca.forward(x, x, golden_mask(case), backend=backend, **case["params"])
    want_y = np.asarray(case["y"], np.float32).reshape(case["output_shape"])
    want_argmax = np.asarray(case["argmax"], np.int64).reshape(case["argmax_shape"])
    want_mass = np.asarray(case["attention_mass"], np.float32).reshape(case["argmax_shape"])
    assert out.y.dtype == np.float32 and out.y.shape == want_y.shape
    np.testing.assert_allclose(out.y, want_y, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(out.argmax, want_argmax)
    np.testing.assert_allclose(out.mass, want_mass, rtol=0, atol=1e-5)
    # offsets are argmax as (row, col) in b's patch grid, whose width is ceil(Wb / rate).
    pw = -(-case["input_shape"][2] // case["params"]["rate"])
    np.testing.assert_array_equal(out.offsets[..., 0], want_argmax // pw)
    np.testing.assert_array_equal(out.offsets[..., 1], want_argmax % pw)
    assert out["y"] is out.y and out.offsets.dtype == np.int32


def cli():
    """The command-line program built by `cargo build` (CI builds it before these tests)."""
    path = os.environ.get("CONTEXTUAL_ATTENTION_CLI")
    candidates = [pathlib.Path(path)] if path else [REPO / "target" / p / "contextual-attention" for p in ("debug", "release")]
    found = [c for c in candidates if c.exists()]
    if not found:
        pytest.fail(f"the program is not built ({', '.join(map(str, candidates))}); run `cargo build` in {REPO}")
    return max(found, key=lambda p: p.stat().st_mtime)


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_as_the_command_line_program(backend):
    rng = np.random.default_rng(7)
    f = rng.standard_normal((2, 12, 16, 3), dtype=np.float32)
    b = rng.standard_normal((2, 16, 12, 3), dtype=np.float32)
    mask = np.zeros((1, 16, 12, 1), np.float32)
    mask[:, 4:10, 2:9] = 1
    out = ca.forward(f, b, mask, rate=2, masking="exclude", overlap="exact", backend=backend)
    with tempfile.TemporaryDirectory() as d:
        d = pathlib.Path(d)
        for name, a in (("f", f), ("b", b), ("m", mask)):
            np.save(d / f"{name}.npy", a)
        args = [str(cli()), "attend", "--f", d / "f.npy", "--b", d / "b.npy", "--mask", d / "m.npy"]
        args += ["--out-y", d / "y.npy", "--out-offsets", d / "o.npy", "--out-mass", d / "mass.npy"]
        args += ["--rate", "2", "--masking", "exclude", "--overlap", "exact", "--backend", backend]
        subprocess.run([str(a) for a in args], check=True)
        y, offsets, mass = (np.load(d / n) for n in ("y.npy", "o.npy", "mass.npy"))
    # The same library in another process: the GPU may pick another GEMM variant there (its
    # autotuner times them), so the sums may round differently, by a few ulps.
    np.testing.assert_allclose(out.y, y, rtol=0, atol=1e-5 * np.abs(y).max())
    np.testing.assert_array_equal(out.offsets, offsets)
    np.testing.assert_allclose(out.mass, mass, rtol=0, atol=1e-6)


def test_a_size_not_divisible_by_the_rate_is_a_value_error():
    x = np.zeros((1, 7, 8, 2), np.float32)
    with pytest.raises(ValueError, match="not divisible by rate 2"):
        ca.forward(x, x, rate=2, backend="cpu")


def test_bad_inputs_and_parameters_are_value_errors():
    x = np.zeros((1, 8, 8, 2), np.float32)
    with pytest.raises(ValueError, match="float array"):
        ca.forward(x.astype(np.int32), x, backend="cpu")
    with pytest.raises(ValueError, match="4 dimensions"):
        ca.forward(x[0], x, backend="cpu")
    with pytest.raises(ValueError, match="shape error in `b`"):
        ca.forward(x, np.zeros((1, 8, 8, 3), np.float32), backend="cpu")
    with pytest.raises(ValueError, match="`ksize` = 0"):
        ca.forward(x, x, ksize=0, backend="cpu")
    with pytest.raises(ValueError, match="masking"):
        ca.forward(x, x, masking="sometimes", backend="cpu")
    with pytest.raises(ValueError, match="backend"):
        ca.Layer(backend="tpu")
    with pytest.raises(TypeError):
        ca.forward(x, x, backend="cpu", unknown_option=1)


def test_float64_and_strided_inputs_give_the_float32_result():
    rng = np.random.default_rng(3)
    x64 = rng.standard_normal((1, 8, 16, 4))
    want = ca.forward(x64.astype(np.float32), x64.astype(np.float32), rate=2, backend="cpu")
    got = ca.forward(x64, x64, rate=2, backend="cpu")
    np.testing.assert_array_equal(got.y, want.y)
    # A non-contiguous view (every other column of a wider array) is copied, not misread.
    wide = np.repeat(x64, 2, axis=2)[:, :, ::2]
    np.testing.assert_array_equal(ca.forward(wide, wide, rate=2, backend="cpu").y, want.y)


@pytest.mark.skipif(SKIP_GPU, reason="CA_SKIP_GPU_TESTS=1")
def test_a_layer_is_reused_across_shapes():
    layer = ca.Layer(rate=2)
    assert "reference" not in layer.backend.lower()
    rng = np.random.default_rng(5)
    for shape in ((1, 8, 8, 2), (2, 12, 10, 3), (1, 8, 8, 2)):
        x = rng.standard_normal(shape, dtype=np.float32)
        got = layer(x, x)
        want = ca.forward(x, x, rate=2, backend="reference")
        np.testing.assert_allclose(got.y, want.y, rtol=0, atol=1e-5 * max(1.0, np.abs(want.y).max()))


def test_the_gil_is_released_during_a_call():
    # A slow call (the f64 twin) in a thread; this thread counts while it runs. Holding the GIL,
    # the call would leave this loop a few switch intervals at most.
    x = np.random.default_rng(1).standard_normal((1, 48, 48, 8), dtype=np.float32)
    layer = ca.Layer(rate=1, backend="reference")
    worker = threading.Thread(target=layer.forward, args=(x, x))
    worker.start()
    count, start = 0, time.perf_counter()
    while worker.is_alive():
        count += 1
    elapsed = time.perf_counter() - start
    worker.join()
    assert elapsed > 0.2, f"the call took {elapsed:.3f} s, too short to tell"
    assert count > 100_000, f"this thread ran only {count} iterations in {elapsed:.2f} s: the GIL was held"


def test_the_docstring_examples_run():
    import doctest

    result = doctest.testmod(ca)
    assert result.attempted >= 4 and result.failed == 0, result
