"""segment() end to end versus a bare MONAI sliding_window_inference call (same net, window, blending).

Each (volume, mode) runs in a fresh subprocess so its peak RAM (ru_maxrss) is its own. Run under the
CPU lock; writes docs/bench_segment.md::

    flock /tmp/medgen-cpu.lock python benchmarks/bench_segment.py [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROI = (96, 96, 96)
SW_BATCH = 2
CASES = {"sample brain (95x117x99)": "brain", "CT-sized (100x512x512, synthetic)": "ct"}


def volume(case: str):
    import numpy as np

    if case == "brain":
        from napari_medgen.sample_data import brain_t1
        return brain_t1().data
    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[:100, :512, :512]
    body = ((y - 256) / 200.0) ** 2 + ((x - 256) / 160.0) ** 2 < 1
    vol = np.where(body, 40, -1000) + rng.normal(0, 20, (100, 512, 512))
    return vol.astype(np.int16)


def worker(case: str, mode: str, threads: int, repeats: int) -> dict:
    """``mode`` "bare"/"segment": one call, peak RAM. ``mode`` "time": both, alternating, min seconds."""
    import psutil
    import torch
    from monai.inferers import sliding_window_inference

    from napari_medgen import Model, segment, segmentation_config
    from napari_medgen.data.normalize import normalize

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    vol = volume(case)
    spec = {"kind": "window", "low": -1000, "high": 1000} if case == "ct" else {"kind": "percentile"}
    model = Model(segmentation_config("bench-3d", 4, spatial_dims=3, channels=(8, 16, 32), strides=(2, 2),
                                      num_res_units=1, normalization=spec, patch_size=ROI))
    net = model.net.eval()
    x = torch.from_numpy(normalize(vol, spec))[None, None] if mode != "segment" else None  # prepared untimed

    def call(which, v, t):
        if which == "bare":
            with torch.inference_mode():
                return tuple(sliding_window_inference(t, ROI, SW_BATCH, net, overlap=0.5, mode="gaussian").shape)
        return segment(v, model, device="cpu", batch_size=SW_BATCH).shape

    small = vol[:40, :40, :40]
    for which in ("bare", "segment"):  # warm-up, outside the timing
        call(which, small, torch.from_numpy(normalize(small, spec))[None, None])
    if mode == "time":
        times = {"bare": [], "segment": []}
        for _ in range(repeats):
            for which in times:
                t0 = time.perf_counter()
                call(which, vol, x)
                times[which].append(time.perf_counter() - t0)
        return {k: min(v) for k, v in times.items()}
    rss0 = psutil.Process().memory_info().rss
    call(mode, vol, x)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_mib": peak / 2**20, "extra_mib": (peak - rss0) / 2**20}


def builtin_2d(threads: int) -> float:
    import torch

    from napari_medgen import segment
    from napari_medgen.sample_data import brain_t1

    torch.set_num_threads(threads)
    img = brain_t1()
    segment(img.data[:8], "brain-tissue-2d")
    t0 = time.perf_counter()
    segment(img, "brain-tissue-2d")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", nargs=2, metavar=("CASE", "MODE"))
    ap.add_argument("--repeats", type=int, default=5, help="timing rounds for the brain (best reported)")
    ap.add_argument("--out", default=str(Path(__file__).parents[1] / "docs" / "bench_segment.md"))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.threads, args.repeats)))
        return
    import torch

    rows = []
    for label, case in CASES.items():
        res = {}
        for mode in ("time", "bare", "segment"):
            cmd = [sys.executable, __file__, "--worker", case, mode, "--threads", str(args.threads),
                   "--repeats", str(args.repeats if case == "brain" else 2)]
            res[mode] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            print(label, mode, res[mode], flush=True)
        rows.append((label, res))
    t2d = builtin_2d(args.threads)
    lines = [
        "## Segmentation inference (issue 3)", "",
        f"CPU only ({args.threads} threads of a shared 2-core machine; no GPU in this session, so no GPU/AMP "
        f"figures). Same MONAI 3D UNet (channels 8-16-32, untrained; timing only), window {ROI}, overlap 0.5, "
        f"Gaussian blending, window batch {SW_BATCH}, torch {torch.__version__}. `bare` = one "
        "`sliding_window_inference` call on an already normalised tensor (logits out); `segment()` = "
        "end to end from the raw numpy volume: checks, normalisation, the same sliding window with softmax, "
        "argmax to labels. Timing: one process per volume, a small warm-up, then bare and segment() "
        f"alternating ({args.repeats} rounds for the brain, 2 for the CT-sized volume), best of each "
        "(the machine is shared, so the minimum is the least disturbed figure). Peak RAM: a fresh process "
        "per (volume, mode) making one call; max RSS, and 'extra' = its rise during the call.", "",
        "| volume | bare s | segment() s | ratio | bare peak / extra MiB | segment() peak / extra MiB |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in rows:
        t, b, g = r["time"], r["bare"], r["segment"]
        lines.append(f"| {label} | {t['bare']:.2f} | {t['segment']:.2f} | {t['segment'] / t['bare']:.2f} | "
                     f"{b['peak_mib']:.0f} / {b['extra_mib']:.0f} | {g['peak_mib']:.0f} / {g['extra_mib']:.0f} |")
    lines += ["", f"Built-in 2D model (`brain-tissue-2d`, slice-wise, batched) on the whole sample brain: "
                  f"{t2d:.1f} s on CPU.", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
