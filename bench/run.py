"""Side-by-side benchmarks of w2vtk against the reference implementations.

    python bench/run.py --json OUT.json                  # everything (6-9 minutes on a quiet 2-core CPU)
    python bench/run.py --bench pretrain_fp32 --reps 5   # one benchmark, more repetitions

Benchmarks (keys of OUT.json):
  pretrain_fp32, pretrain_bf16  one BASE pretraining update on 4 x 5 s of speech, against transformers'
                                Wav2Vec2ForPreTraining (fp32, and bf16 autocast); audio seconds per second
  inference                     BASE CTC forward over 10 s utterances, against Wav2Vec2ForCTC; real-time factor
  decode                        4-gram beam search (beam 50), against pyctcdecode's defaults; utterances/s, WER
  prepare                       `prepare librispeech` over thousands of files, against a soundfile.info loop

Each side runs in its own worker process (peak memory is its own) and the two alternate, one
repetition at a time, after warm-up; medians of wall time and of CPU time are reported with the
ratio ours/ref of the speeds (> 1: ours is faster). See bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import corpus, harness  # noqa: E402

BENCHES = ("pretrain_fp32", "pretrain_bf16", "inference", "decode", "prepare")
SAMPLE_RATE = 16000


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--json", type=Path, help="write the results here (atomically)")
    p.add_argument("--bench", default=",".join(BENCHES),
                   help=f"comma-separated benchmarks to run (default: all of {', '.join(BENCHES)})")
    p.add_argument("--threads", type=int, default=2,
                   help="torch intra-op threads and OMP_NUM_THREADS of every worker (default 2)")
    p.add_argument("--reps", type=int, default=None,
                   help="timed repetitions per side (default: 3 for pretraining, 5 for the others)")
    p.add_argument("--warmup", type=int, default=4,
                   help="untimed repetitions per side first (default 4: pretraining updates of both sides keep "
                        "getting faster over the first four or five, while their heaps grow)")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds idle before each timed repetition (default 2: right after one of transformers' "
                        "pretraining updates, ours ran about 5%% slower than after one of its own)")
    p.add_argument("--cache", type=Path, default=corpus.DEFAULT_CACHE,
                   help="where the synthesized corpus, LM and inputs are kept (default bench/.cache)")
    p.add_argument("--corpus", type=Path, default=None,
                   help="an existing synthesized LibriSpeech corpus (with train-clean-100, test-clean and "
                        "lm-text.txt) instead of synthesizing one")
    p.add_argument("--size", choices=("base", "tiny"), default="base",
                   help="model size for pretraining and inference; tiny is for smoke tests (default base)")
    p.add_argument("--batch", type=int, default=4, help="pretraining utterances per batch (default 4)")
    p.add_argument("--seconds", type=float, default=5.0, help="pretraining utterance length (default 5)")
    p.add_argument("--infer-batch", type=int, default=4, help="inference utterances per forward (default 4)")
    p.add_argument("--infer-seconds", type=float, default=10.0, help="inference utterance length (default 10)")
    p.add_argument("--layerdrop", type=float, default=0.0,
                   help="LayerDrop of both pretraining models (default 0: every layer runs every step)")
    p.add_argument("--foreach-adamw", action="store_true",
                   help="time our update with torch's for-each AdamW instead of the trainer's fused one "
                        "(keys pretrain_*_foreach_adamw; the reference keeps its example's AdamW)")
    p.add_argument("--ref-keeps-freed-memory", action="store_true",
                   help="give the reference workers the host-memory policy the w2vtk command sets for itself "
                        "(w2vtk.cpu.host_memory: freed memory reused, not returned; huge pages at inference); by "
                        "default only ours has it")
    p.add_argument("--gemm-size", type=int, default=2048,
                   help="matrix size of the GEMM peak probes (default 2048; smaller for smoke tests on machines "
                        "without native bf16 products, where one 2048 product takes seconds)")
    p.add_argument("--no-flops", action="store_true", help="skip FLOP counting (FlopCounterMode) of a step")
    p.add_argument("--decode-utts", type=int, default=500,
                   help="utterances decoded per repetition: the test transcripts over and over, each time "
                        "with fresh noise (default 500)")
    p.add_argument("--decode-jobs", type=int, default=2, help="our decoding processes (default 2)")
    p.add_argument("--prepare-copies", type=int, default=18,
                   help="copies of the corpus files to scan (default 18: about 3000 files)")
    p.add_argument("--prepare-jobs", type=int, default=2, help="our header-reading processes (default 2)")
    args = p.parse_args(argv)
    args.bench = [b.strip() for b in args.bench.split(",") if b.strip()]
    unknown = [b for b in args.bench if b not in BENCHES]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    return args


def _pair(ours: float, ref: float) -> dict:
    return {"ours": ours, "ref": ref, "ratio": ours / ref if ref else None}


def _speed_entry(res: dict, amount: float, unit: str, cpu_unit: str, threads: int) -> dict:
    """Speeds from median times: `amount` units of work per repetition."""
    ours, ref = res["ours"], res["ref"]
    entry = {"unit": unit, **_pair(amount / ours.wall, amount / ref.wall),
             "cpu": {"unit": cpu_unit, **_pair(amount / ours.cpu, amount / ref.cpu)},
             "wall_s": {"ours": ours.walls, "ref": ref.walls}, "cpu_s": {"ours": ours.cpus, "ref": ref.cpus},
             "threads": threads}
    return entry


def _memory(res: dict) -> dict:
    return {"unit": "MB (peak RSS of each side's own worker process)",
            **_pair(res["ours"].extra["peak_rss_mb"], res["ref"].extra["peak_rss_mb"]),
            "after_import": {s: res[s].extra["rss_after_import_mb"] for s in ("ours", "ref")}}


def run_pretrain(args, precision: str, wav_path: Path, gemm: dict, log) -> dict:
    # the trainer's fused AdamW on our side; the reference keeps the for-each AdamW its example uses
    specs = {side: {"bench": "pretrain", "side": side, "precision": precision, "wav": str(wav_path),
                    "layerdrop": args.layerdrop, "size": args.size,
                    "fused_adamw": side == "ours" and not args.foreach_adamw,
                    "keep_freed_memory": _has_our_memory_policy(args, side)}
             for side in ("ours", "ref")}
    res = _alternate_with_probe(args, specs, args.reps or 3, log)
    audio = args.batch * args.seconds
    entry = _speed_entry(res, audio, "audio s/s", "audio s per CPU s", args.threads)
    entry["peak_rss_mb"] = _memory(res)
    entry["batch"] = f"{args.batch} x {args.seconds:g} s"
    if not args.no_flops:
        _add_gemm_fraction(entry, res, gemm, args.threads)
    entry["loss"] = {s: res[s].extra.get("loss") for s in ("ours", "ref")}
    entry["keeps_freed_memory"] = {s: specs[s]["keep_freed_memory"] for s in specs}
    return entry


def _alternate_with_probe(args, specs: dict, reps: int, log) -> dict:
    """harness.alternate with FLOPs counted and the fp32 GEMM peak measured before each repetition
    (neither with --no-flops)."""
    probe = None if args.no_flops else harness.GemmProbe(args.threads, size=args.gemm_size)
    try:
        return harness.alternate(specs, args.threads, args.warmup, reps, flops=not args.no_flops,
                                 settle_s=args.settle, probe=probe, log=log)
    finally:
        if probe is not None:
            probe.close()


def _has_our_memory_policy(args, side: str) -> bool:
    """Our side runs as the w2vtk command does (w2vtk.cpu.host_memory: freed memory kept for reuse, and
    huge pages for the inference commands); --ref-keeps-freed-memory gives the reference the same."""
    return side == "ours" or args.ref_keeps_freed_memory


def _add_gemm_fraction(entry: dict, res: dict, gemm: dict, threads: int) -> None:
    """FLOPs of one repetition and the achieved fraction of the fp32 GEMM peak, into `entry`.

    Two counts: each side's own (what it executed: our positional convolution runs by FFTs, which
    counts as fewer FLOPs), and the model's, taken as the reference's count of the same
    architecture computed directly (`model_flops_*`: the work both sides deliver per repetition).
    Each repetition is divided by the peak measured right before it (`harness.GemmProbe`), and the
    fractions are the medians over repetitions; `*_opening_peak` divides the median times by the
    peak measured once at the start of the run instead.
    """
    flops = {s: res[s].extra["flops"] for s in ("ours", "ref")}
    model_flops = flops["ref"]
    entry["flops_per_step"] = flops
    entry["model_flops_per_step"] = model_flops
    entry["achieved_flops_per_s"] = {s: flops[s] / res[s].wall for s in flops}
    entry["gemm_peak_before_each"] = {s: [p["flops_per_s"] for p in res[s].peaks] for s in flops}

    def per_rep(count: float, side: str, cpu: bool = False) -> float:
        # by wall time, and by CPU time (CPU seconds against CPU seconds: other processes' load
        # affects it much less)
        r = res[side]
        times, key = (r.cpus, "flops_per_cpu_s") if cpu else (r.walls, "flops_per_s")
        scale = threads if cpu else 1
        return statistics.median(count / t * scale / p[key] for t, p in zip(times, r.peaks))

    entry["gemm_fraction"] = {s: per_rep(flops[s], s) for s in flops}
    entry["gemm_fraction_cpu"] = {s: per_rep(flops[s], s, cpu=True) for s in flops}
    entry["model_flops_fraction"] = {s: per_rep(model_flops, s) for s in flops}
    entry["model_flops_fraction_cpu"] = {s: per_rep(model_flops, s, cpu=True) for s in flops}
    opening = gemm["float32"]["flops_per_s"]
    entry["model_flops_fraction_opening_peak"] = {s: model_flops / res[s].wall / opening for s in flops}


def run_inference(args, wav_path: Path, gemm: dict, log) -> dict:
    specs = {side: {"bench": "inference", "side": side, "wav": str(wav_path), "size": args.size,
                    "keep_freed_memory": _has_our_memory_policy(args, side),
                    "huge_pages": _has_our_memory_policy(args, side)}
             for side in ("ours", "ref")}
    res = _alternate_with_probe(args, specs, args.reps or 5, log)
    audio = args.infer_batch * args.infer_seconds
    entry = _speed_entry(res, audio, "audio s/s", "audio s per CPU s", args.threads)
    entry["rtf"] = {"unit": "compute s per audio s (lower is better)",
                    "ours": res["ours"].wall / audio, "ref": res["ref"].wall / audio}
    entry["rtf_cpu"] = {"unit": "CPU s per audio s", "ours": res["ours"].cpu / audio, "ref": res["ref"].cpu / audio}
    entry["peak_rss_mb"] = _memory(res)
    entry["batch"] = f"{args.infer_batch} x {args.infer_seconds:g} s"
    entry["keeps_freed_memory"] = {s: specs[s]["keep_freed_memory"] for s in specs}
    entry["huge_pages"] = {s: specs[s]["huge_pages"] for s in specs}
    if not args.no_flops:  # how close each side is to the machine's matmul rate: the room left
        _add_gemm_fraction(entry, res, gemm, args.threads)
    return entry


def run_decode(args, corpus_dir: Path, log) -> dict:
    from bench import decode

    arpa = corpus.four_gram(args.cache, corpus_dir)
    task = decode.make_task(args.cache, corpus_dir, args.decode_utts)
    specs = {"ours": {"bench": "decode", "side": "ours", "task": str(task), "lm": str(arpa),
                      "jobs": args.decode_jobs},
             "ref": {"bench": "decode", "side": "ref", "task": str(task), "lm": str(arpa)}}
    res = harness.alternate(specs, args.threads, args.warmup, args.reps or 5, settle_s=args.settle, log=log)
    n = res["ours"].extra["utterances"]
    entry = _speed_entry(res, n, "utterances/s", "utterances per CPU s (all processes)", args.threads)
    entry["wer"] = {"unit": "%", "ours": res["ours"].extra["wer"], "ref": res["ref"].extra["wer"],
                    "greedy": decode.greedy_wer(str(task))}
    entry["utterances"] = n
    entry["jobs"] = {"ours": args.decode_jobs, "ref": 1}
    entry["beam"] = decode.BEAM
    return entry


def run_prepare(args, corpus_dir: Path, log) -> dict:
    root = corpus.prepare_corpus(args.cache, corpus_dir, args.prepare_copies)
    specs = {"ours": {"bench": "prepare", "side": "ours", "corpus": str(root), "jobs": args.prepare_jobs},
             "ref": {"bench": "prepare", "side": "ref", "corpus": str(root)}}
    res = harness.alternate(specs, args.threads, args.warmup, args.reps or 5, settle_s=args.settle, log=log)
    files = res["ref"].extra["files"]
    if res["ours"].extra["files"] != files:
        raise RuntimeError(f"prepare listed {res['ours'].extra['files']} files, the loop {files}")
    entry = _speed_entry(res, files, "files/s", "files per CPU s (all processes)", args.threads)
    entry["files"] = files
    entry["jobs"] = {"ours": args.prepare_jobs, "ref": 1}
    return entry


def table(results: dict) -> str:
    """A readable summary: speeds, ratios by wall and by CPU time, and the extras."""
    rows = [("benchmark", "unit", "ours", "ref", "ratio", "ratio (CPU)", "notes")]
    for key, e in results.items():
        if not isinstance(e, dict) or "ratio" not in e:
            continue
        notes = []
        if "peak_rss_mb" in e:
            m = e["peak_rss_mb"]
            notes.append(f"peak RSS {m['ours']:.0f}/{m['ref']:.0f} MB")
        if "gemm_fraction" in e:
            g, gc = e["gemm_fraction"], e["gemm_fraction_cpu"]
            m, mc = e["model_flops_fraction"], e["model_flops_fraction_cpu"]
            o = e["model_flops_fraction_opening_peak"]
            notes.append(f"of the GEMM peak, FLOPs executed {g['ours']:.0%}/{g['ref']:.0%} "
                         f"(CPU {gc['ours']:.0%}/{gc['ref']:.0%}), model FLOPs {m['ours']:.0%}/{m['ref']:.0%} "
                         f"(CPU {mc['ours']:.0%}/{mc['ref']:.0%}; {o['ours']:.0%}/{o['ref']:.0%} "
                         f"against the opening peak)")
        if "rtf" in e:
            notes.append(f"RTF {e['rtf']['ours']:.3f}/{e['rtf']['ref']:.3f}")
        if "wer" in e:
            notes.append(f"WER {e['wer']['ours']:.2f}/{e['wer']['ref']:.2f}% (greedy {e['wer']['greedy']:.2f}%)")
        rows.append((key, e["unit"], f"{e['ours']:.3g}", f"{e['ref']:.3g}", f"{e['ratio']:.2f}x",
                     f"{e['cpu']['ratio']:.2f}x", "; ".join(notes)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines) + "\n(ours/ref in the notes)"


def machine_facts(threads: int) -> dict:
    import torch

    facts = {"threads": threads, "torch": torch.__version__, "python": platform.python_version(),
             "cpu": _cpu_model(), "cores": os.cpu_count(), "load_average_start": os.getloadavg(),
             "note": "taken on a machine shared with other work: compare the ratios, not the absolute figures"}
    try:
        import transformers

        facts["transformers"] = transformers.__version__
    except ImportError:
        pass
    return facts


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(argv=None) -> dict:
    args = parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    args.cache.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict = {"machine": machine_facts(args.threads)}
    corpus_dir = args.corpus or corpus.synth_corpus(args.cache)
    pretraining = [b for b in args.bench if b.startswith("pretrain")]
    gemm: dict = {}
    if pretraining or "inference" in args.bench:
        log("GEMM peak (torch.mm)")
        results["gemm_peak"] = gemm = {d: harness.gemm_peak(args.threads, size=args.gemm_size, dtype=d)
                                       for d in ("float32", "bfloat16")}
    if pretraining:
        import numpy as np

        wav = corpus.speech_segments(corpus_dir, args.batch, args.seconds)
        wav_path = args.cache / f"pretrain-{args.batch}x{args.seconds:g}.npy"
        np.save(wav_path, wav)
        for name in pretraining:
            precision = name.split("_")[1]
            if args.foreach_adamw:
                name += "_foreach_adamw"
            log(f"{name}: {args.size} pretraining update on {args.batch} x {args.seconds:g} s ({precision})")
            results[name] = run_pretrain(args, precision, wav_path, gemm, log)
    if "inference" in args.bench:
        import numpy as np

        log(f"inference: CTC forward on {args.infer_batch} x {args.infer_seconds:g} s")
        wav_path = args.cache / f"inference-{args.infer_batch}x{args.infer_seconds:g}.npy"
        np.save(wav_path, corpus.speech_segments(corpus_dir, args.infer_batch, args.infer_seconds))
        results["inference"] = run_inference(args, wav_path, gemm, log)
    if "decode" in args.bench:
        log(f"decode: 4-gram beam search over {args.decode_utts} utterances")
        results["decode"] = run_decode(args, corpus_dir, log)
    if "prepare" in args.bench:
        log("prepare: manifest scan")
        results["prepare"] = run_prepare(args, corpus_dir, log)
    results["machine"]["load_average_end"] = os.getloadavg()
    results["machine"]["total_s"] = time.perf_counter() - started
    results["machine"]["method"] = {"warmup": args.warmup, "settle_s": args.settle, "reps": args.reps}
    print(table(results))
    if args.json:
        from w2vtk.fileio import atomic_write_text

        atomic_write_text(args.json, json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
