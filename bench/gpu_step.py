"""One BASE pretraining update on a CUDA GPU: ours against transformers' Wav2Vec2ForPreTraining.

Both sides in one process on the same batch (4 x 5 s), bf16 autocast, fused AdamW, LayerDrop off,
each update closed by torch.cuda.synchronize; warm-ups, then alternating timed updates, medians.
Usage: python bench/gpu_step.py [--reps 10] [--warmup 3] [--json OUT.json]. Run by bench/gpu_check.sh.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch


def main() -> None:
    from bench.pretrain import OursStep, RefStep

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    rng = np.random.default_rng(1)
    wav = (rng.standard_normal((4, 80000)) * 0.1).astype(np.float32)
    sides = {"ours": OursStep(wav, args.precision, 0.0, True, device="cuda"),
             "ref": RefStep(wav, args.precision, 0.0, True, device="cuda")}
    times: dict[str, list[float]] = {name: [] for name in sides}
    for rep in range(args.warmup + args.reps):
        order = list(sides) if rep % 2 == 0 else list(sides)[::-1]
        for name in order:
            torch.cuda.synchronize()
            start = time.perf_counter()
            sides[name]()
            torch.cuda.synchronize()
            if rep >= args.warmup:
                times[name].append(time.perf_counter() - start)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "precision": args.precision,
              "batch": "4 x 5 s", **{f"{k}_median_s": statistics.median(v) for k, v in times.items()},
              "ratio": statistics.median(times["ref"]) / statistics.median(times["ours"]),
              "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30}
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
