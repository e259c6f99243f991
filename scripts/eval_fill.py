#!/usr/bin/env python3
"""Evaluates `contextual-attention fill` against OpenCV's Telea and Navier-Stokes inpainting and
PatchMatch (PyPatchMatch, patch size 5) on the bundled and shared images.

Per image: seeded free-form brush-stroke masks (DeepFill v2 style, 8-20 % of the image) and one
centred rectangle. Per method: PSNR over the hole's pixels, SSIM averaged over the hole, the
gradient-energy ratio (mean gradient magnitude in the hole over that in a 16-pixel band around
it: 1 is as sharp as the surroundings, near 0 is smeared) and wall time.

    python3 -m venv .venv-eval && .venv-eval/bin/pip install -r scripts/requirements.txt
    cargo build --release --bin contextual-attention
    .venv-eval/bin/python scripts/eval_fill.py [--strokes 2] [--backend cpu] [--pictures docs/] \
        [--seed 2026 --seed 7 --seed 11]

Each --seed draws its own masks and reseeds PatchMatch (the same cases as a run with that seed
alone); with several seeds the summary is given per seed and over all cases. The defaults were
chosen on seed 2026's masks, so the other seeds are the honest test.

Not part of CI.
"""

import argparse
import glob
import math
import os
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np
from skimage.metrics import structural_similarity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def brush_mask(h, w, rng, lo=0.08, hi=0.20):
    """Free-form strokes in the DeepFill v2 manner: random walks of thick line segments with
    round joints, added until the hole covers a random fraction in [lo, hi]."""
    target = rng.uniform(lo, hi)
    mask = np.zeros((h, w), np.uint8)
    while mask.mean() / 255 < target:
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        width = int(rng.integers(max(6, w // 50), max(12, w // 14)))
        for _ in range(int(rng.integers(4, 12))):
            angle = rng.uniform(0, 2 * math.pi)
            length = rng.uniform(w / 25, w / 6)
            nx = int(np.clip(x + length * math.cos(angle), 0, w - 1))
            ny = int(np.clip(y + length * math.sin(angle), 0, h - 1))
            cv2.line(mask, (x, y), (nx, ny), 255, width)
            cv2.circle(mask, (nx, ny), width // 2, 255, -1)
            x, y = nx, ny
            if mask.mean() / 255 >= hi:
                break
    return mask


def rect_mask(h, w):
    mask = np.zeros((h, w), np.uint8)
    rh, rw = h * 3 // 16, w // 4
    mask[(h - rh) // 2:(h + rh) // 2, (w - rw) // 2:(w + rw) // 2] = 255
    return mask


def gradient(img):
    g = img.astype(np.float64)
    if g.ndim == 3:
        g = g.mean(axis=2)
    gx = cv2.Sobel(g, cv2.CV_64F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_64F, 0, 1, ksize=3)
    return np.hypot(gx, gy)


def metrics(result, truth, mask):
    hole = mask > 0
    diff = result.astype(np.float64)[hole] - truth.astype(np.float64)[hole]
    psnr = 10 * math.log10(255.0**2 / max(np.mean(diff**2), 1e-12))
    channel_axis = 2 if truth.ndim == 3 else None
    _, ssim_map = structural_similarity(truth, result, channel_axis=channel_axis, data_range=255, full=True)
    if ssim_map.ndim == 3:
        ssim_map = ssim_map.mean(axis=2)
    ssim = float(ssim_map[hole].mean())
    band = cv2.dilate(mask, np.ones((33, 33), np.uint8)) > 0
    band &= ~hole
    grad = gradient(result)
    energy = grad[hole].mean() / max(grad[band].mean(), 1e-9)
    return psnr, ssim, energy


def ours(binary, backend, extra, img_path, mask, workdir):
    mask_path = os.path.join(workdir, "mask.png")
    out_path = os.path.join(workdir, "ours.png")
    cv2.imwrite(mask_path, mask)
    t0 = time.perf_counter()
    subprocess.run([binary, "fill", "--backend", backend, "--image", img_path, "--mask", mask_path, "--out", out_path]
                   + extra, check=True, stderr=subprocess.DEVNULL)
    t = time.perf_counter() - t0
    return cv2.imread(out_path, cv2.IMREAD_UNCHANGED), t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "contextual-attention"))
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--strokes", type=int, default=2, help="free-form masks per image")
    ap.add_argument("--seed", type=int, action="append",
                    help="mask seed (default 2026); give it several times to evaluate on more masks")
    ap.add_argument("--pictures", help="folder to write a comparison picture per image into")
    ap.add_argument("--fill-args", action="append",
                    help="more flags for our fill, e.g. '--finest iterate'; give it several times to compare "
                         "settings in one run (the other methods run once per case)")
    args = ap.parse_args()
    settings = args.fill_args or [""]
    ours_names = ["ours"] if len(settings) == 1 else [f"ours{i}" for i in range(len(settings))]
    for name, setting in zip(ours_names, settings):
        print(f"{name}: fill {setting or '(defaults)'}")
    import patchmatch  # noqa: E402  (PyPatchMatch)
    seeds = args.seed or [2026]

    paths = {}
    for p in sorted(glob.glob(os.path.join(ROOT, "assets", "*.png")) +
                    glob.glob(os.path.join(ROOT, "..", "shared", "data", "*.png"))):
        paths.setdefault(os.path.basename(p), p)
    rows = []
    header = f"{'seed':<6}{'image':<14}{'mask':<8}{'hole':>6}  " + "  ".join(
        f"{m:>24}" for m in ["telea", "navier-stokes", "patchmatch"] + ours_names)
    print("per method: PSNR dB / SSIM / gradient ratio / seconds")
    print(header)
    with tempfile.TemporaryDirectory() as workdir:
        for seed in seeds:
            patchmatch.set_random_seed(seed)
            rng = np.random.default_rng(seed)
            for name, path in paths.items():
                img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
                h, w = img.shape[:2]
                masks = [(f"brush{k}", brush_mask(h, w, rng)) for k in range(args.strokes)] + [("rect", rect_mask(h, w))]
                for mask_name, mask in masks:
                    results = {}
                    t0 = time.perf_counter()
                    results["telea"] = (cv2.inpaint(img, mask, 3, cv2.INPAINT_TELEA), time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    results["navier-stokes"] = (cv2.inpaint(img, mask, 3, cv2.INPAINT_NS), time.perf_counter() - t0)
                    pm_in = img if img.ndim == 3 else np.dstack([img] * 3)
                    t0 = time.perf_counter()
                    pm = patchmatch.inpaint(pm_in, mask, patch_size=5)
                    results["patchmatch"] = (pm if img.ndim == 3 else pm[..., 0], time.perf_counter() - t0)
                    for method, setting in zip(ours_names, settings):
                        results[method] = ours(args.binary, args.backend, setting.split(), path, mask, workdir)
                    row = {"seed": seed, "image": name, "mask": mask_name, "hole": (mask > 0).mean()}
                    cells = []
                    for method, (res, t) in results.items():
                        psnr, ssim, energy = metrics(res, img, mask)
                        row[method] = (psnr, ssim, energy, t)
                        cells.append(f"{psnr:6.2f}/{ssim:5.3f}/{energy:4.2f}/{t:6.2f}")
                    rows.append(row)
                    print(f"{seed:<6}{name:<14}{mask_name:<8}{row['hole']:6.1%}  " + "  ".join(f"{c:>24}" for c in cells), flush=True)
                    if args.pictures and mask_name == "rect" and seed == seeds[0]:
                        os.makedirs(args.pictures, exist_ok=True)
                        holed = img.copy()
                        holed[mask > 0] = 255
                        tiles = [holed, results["telea"][0], results["patchmatch"][0], results[ours_names[0]][0]]
                        strip = np.concatenate([t if t.ndim == 3 else np.dstack([t] * 3) for t in tiles], axis=1)
                        cv2.imwrite(os.path.join(args.pictures, f"fill_compare_{os.path.splitext(name)[0]}.png"), strip)
    print()
    groups = [(f"seed {seed}", [r for r in rows if r["seed"] == seed]) for seed in seeds] if len(seeds) > 1 else []
    for label, group in groups + [("all", rows)]:
        n = len(group)
        for name in ours_names:
            better = sum(r[name][0] > r["patchmatch"][0] for r in group)
            sharp = np.median([r[name][2] / max(r["patchmatch"][2], 1e-9) for r in group])
            slower = np.median([r[name][3] / max(r["patchmatch"][3], 1e-9) for r in group])
            gain = np.mean([r[name][0] - r["patchmatch"][0] for r in group])
            print(f"{label}, {n} cases: {name} has the higher hole PSNR than PatchMatch on {better}/{n} "
                  f"({better / n:.0%}, mean {gain:+.2f} dB); median gradient ratio {name}/PatchMatch {sharp:.2f}; "
                  f"median time {name}/PatchMatch {slower:.2f}x")
    for method in ["telea", "navier-stokes", "patchmatch"] + ours_names:
        v = np.array([r[method] for r in rows])
        print(f"mean {method:<14} PSNR {v[:, 0].mean():6.2f} dB  SSIM {v[:, 1].mean():.3f}  "
              f"gradient ratio {v[:, 2].mean():.2f}  time {v[:, 3].mean():.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
