"""Times the contextual attention layer's two big ops in TensorFlow on this machine: the matching
convolution (tf.nn.conv2d of the downscaled f with L filters of k×k×C) and the paste
(tf.nn.conv2d_transpose of the attention with L filters of K×K×C at stride r), on the shapes of
`contextual-attention bench`'s standard cases. A lower bound on the original layer's time (it
also extracts patches, fuses and takes a softmax), for comparing with the CPU backend on the
same machine. Usage: python3 scripts/tf-ops-bench.py [repeats]; needs `pip install tensorflow-cpu`.
Prints one JSON object per case: median ms of conv2d, of conv2d_transpose, and of both, and the
process's peak RSS growth in MB (VmHWM after − VmRSS before)."""
import json
import sys
import time

import numpy as np
import tensorflow as tf


def rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def case(h, w, c, rate, repeats):
    hf, wf = h // rate, w // rate
    k, big_k, n_patches = 3, 2 * rate, hf * wf
    rng = np.random.default_rng(0)
    f = tf.constant(rng.standard_normal((1, hf, wf, c)).astype(np.float32))
    filters = tf.constant(rng.standard_normal((k, k, c, n_patches)).astype(np.float32))
    attention = tf.constant(rng.random((1, hf, wf, n_patches)).astype(np.float32))
    raw = tf.constant(rng.standard_normal((big_k, big_k, c, n_patches)).astype(np.float32))
    before = rss_kib("VmRSS:")
    with open("/proc/self/clear_refs", "w") as cr:
        cr.write("5")

    def scores():
        return tf.nn.conv2d(f, filters, strides=1, padding="SAME")

    def paste():
        return tf.nn.conv2d_transpose(attention, raw, (1, h, w, c), strides=[1, rate, rate, 1], padding="SAME")

    out = {}
    for name, op in [("conv2d", scores), ("conv2d_transpose", paste)]:
        op().numpy()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            op().numpy()
            times.append((time.perf_counter() - t0) * 1e3)
        out[name + "_ms"] = float(np.median(times))
    out["both_ms"] = out["conv2d_ms"] + out["conv2d_transpose_ms"]
    out["op_mb"] = (rss_kib("VmHWM:") - before) * 1024 / 1e6
    gflop = 2 * hf * wf * n_patches * (k * k * c + big_k * big_k * c) / 1e9
    out.update(case=f"{h}x{w}x{c}:{rate}", gflop=gflop, gflops=gflop / (out["both_ms"] / 1e3), tf=tf.__version__)
    print(json.dumps(out), flush=True)


repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
for h, w, c, rate in [(64, 64, 128, 2), (128, 128, 64, 2), (128, 128, 128, 1)]:
    case(h, w, c, rate, repeats)
