"""Side-by-side benchmarks of w2vtk against the reference implementations, under equal settings.

    python bench/run.py --json OUT.json                  # everything (about 10 minutes on a quiet 2-core CPU)
    python bench/run.py --bench pretrain_fp32 --reps 5   # one benchmark, more repetitions

Benchmarks (keys of OUT.json):
  pretrain_fp32, pretrain_bf16  one BASE pretraining update on 4 x 5 s of speech, against transformers'
                                Wav2Vec2ForPreTraining (fp32, and bf16 autocast); audio seconds per second
  inference                     BASE CTC forward over 10 s utterances, against Wav2Vec2ForCTC; real-time factor
  decode_lexicon_free           lexicon-free beam search (beam 50), against pyctcdecode; utterances/s, WER
  decode_lexicon                lexicon beam search (beam 50), against torchaudio's ctc_decoder; utterances/s, WER
  prepare                       `prepare librispeech` over thousands of files, against soundfile.info in a pool

Equal settings: both sides run with the same threads, the same number of processes, the same
host-memory policy (--host-memory), fused AdamW, and transformers with the faster of its sdpa and
eager attention. Each side runs in its own worker process (peak memory is its own) and the two
alternate, one repetition at a time, after warm-up; medians of wall time and of CPU time are
reported with the ratio ours/ref of the speeds (> 1: ours is faster). See bench/README.md.
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

BENCHES = ("pretrain_fp32", "pretrain_bf16", "inference", "decode_lexicon_free", "decode_lexicon", "prepare")
# speed ratios ours/ref to reach under equal settings; decoding also at equal or lower WER
TARGETS = {"pretrain_fp32": 1.4, "pretrain_bf16": 1.4, "inference": 1.2, "decode_lexicon_free": 3.0,
           "decode_lexicon": 1.0, "prepare": 1.5}
SAMPLE_RATE = 16000
MODEL_WIDTHS = {"base": (768, 3072), "tiny": (256, 1024)}  # Transformer width and FFN width


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
                        "getting faster over the first four or five, while their heaps grow; transformers' sides "
                        "alternate sdpa and eager attention in them)")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds idle before each timed repetition (default 2: right after one of transformers' "
                        "pretraining updates, ours ran about 5%% slower than after one of its own)")
    p.add_argument("--host-memory", choices=("both", "none"), default="both",
                   help="both: every pretraining and inference worker, ours and transformers', runs with the "
                        "host-memory policy the w2vtk command sets for itself (w2vtk.cpu.host_memory: freed memory "
                        "kept for reuse; huge pages at inference); none: neither side (default both)")
    p.add_argument("--peak-drop", type=float, default=0.9,
                   help="hardware fraction: leave out repetitions whose product-kernel peak, measured right "
                        "before them, read below this fraction of the benchmark's best (default 0.9)")
    p.add_argument("--cache", type=Path, default=corpus.DEFAULT_CACHE,
                   help="where the synthesized corpus, LMs and inputs are kept (default bench/.cache)")
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
    p.add_argument("--no-flops", action="store_true",
                   help="skip FLOP counting and the product-kernel peaks (no hardware fraction)")
    p.add_argument("--decode-utts", type=int, default=500,
                   help="utterances decoded per repetition: the test transcripts over and over, each time "
                        "with fresh noise (default 500)")
    p.add_argument("--decode-jobs", type=int, default=2, help="decoding processes of each side (default 2)")
    p.add_argument("--prepare-copies", type=int, default=18,
                   help="copies of the corpus files to scan (default 18: about 3000 files)")
    p.add_argument("--prepare-jobs", type=int, default=2,
                   help="header-reading processes of ours and of the soundfile.info pool (default 2)")
    args = p.parse_args(argv)
    args.bench = [b.strip() for b in args.bench.split(",") if b.strip()]
    unknown = [b for b in args.bench if b not in BENCHES]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    return args


def _pair(ours: float, ref: float) -> dict:
    return {"ours": ours, "ref": ref, "ratio": ours / ref if ref else None}


def _speed_entry(res: dict, amount: float, unit: str, cpu_unit: str, threads: int) -> dict:
    """Speeds from median times: `amount` units of work per repetition; both sides under the same settings."""
    ours, ref = res["ours"], res["ref"]
    return {"settings": "equal", "unit": unit, **_pair(amount / ours.wall, amount / ref.wall),
            "cpu": {"unit": cpu_unit, **_pair(amount / ours.cpu, amount / ref.cpu)},
            "wall_s": {"ours": ours.walls, "ref": ref.walls}, "cpu_s": {"ours": ours.cpus, "ref": ref.cpus},
            "threads": threads}


def _memory(res: dict) -> dict:
    return {"unit": "MB (peak RSS of each side's own worker process)",
            **_pair(res["ours"].extra["peak_rss_mb"], res["ref"].extra["peak_rss_mb"]),
            "after_import": {s: res[s].extra["rss_after_import_mb"] for s in ("ours", "ref")}}


def _attention(res: dict) -> dict:
    """Which of transformers' attention kernels the reference ran, and both kernels' warm-up times."""
    extra = res["ref"].extra
    return {"chosen": extra.get("attention"), "warmup_s": extra.get("attention_warmup_s")}


def _product_shapes(args, rows: int) -> list[list[int]]:
    """(rows, in, out) of a BASE (or tiny) Transformer layer's linear layers, rows = utterances x frames."""
    width, ffn = MODEL_WIDTHS[args.size]
    return [[rows, width, width], [rows, width, ffn], [rows, ffn, width]]


def _frames(samples: int) -> int:
    """Frames of wav2vec 2.0's CNN (receptive field 400 samples, stride 320)."""
    return (samples - 400) // 320 + 1


def run_pretrain(args, precision: str, wav_path: Path, log) -> dict:
    specs = {side: {"bench": "pretrain", "side": side, "precision": precision, "wav": str(wav_path),
                    "layerdrop": args.layerdrop, "size": args.size, "fused_adamw": True,
                    "keep_freed_memory": args.host_memory == "both"}
             for side in ("ours", "ref")}
    rows = args.batch * _frames(int(args.seconds * SAMPLE_RATE))
    dtype = "bfloat16" if precision == "bf16" else "float32"
    res = _alternate_with_probe(args, specs, args.reps or 3, _product_shapes(args, rows), dtype, log)
    audio = args.batch * args.seconds
    entry = _speed_entry(res, audio, "audio s/s", "audio s per CPU s", args.threads)
    entry["peak_rss_mb"] = _memory(res)
    entry["batch"] = f"{args.batch} x {args.seconds:g} s"
    entry["optimizer"] = "torch.optim.AdamW(fused=True), both sides"
    entry["attention_ref"] = _attention(res)
    entry["host_memory"] = args.host_memory
    if not args.no_flops:
        entry.update(_hardware_fraction(res, args.peak_drop))
    entry["loss"] = {s: res[s].extra.get("loss") for s in ("ours", "ref")}
    return entry


def _alternate_with_probe(args, specs: dict, reps: int, shapes: list[list[int]], dtype: str, log) -> dict:
    """harness.alternate with FLOPs counted and the product kernels' peak measured before each
    repetition (neither with --no-flops)."""
    probe = None if args.no_flops else harness.ProductProbe(args.threads, shapes, dtype)
    try:
        return harness.alternate(specs, args.threads, args.warmup, reps, flops=not args.no_flops,
                                 settle_s=args.settle, probe=probe, log=log)
    finally:
        if probe is not None:
            probe.close()


def _spread(values: list[float]) -> dict:
    if not values:
        return {"min": None, "median": None, "max": None}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _hardware_fraction(res: dict, drop_below: float) -> dict:
    """Executed FLOPs per second of each kept repetition over the best product-kernel peak of the benchmark.

    Each side's FLOPs are those it executed (FlopCounterMode over one repetition: ours runs fewer for
    the same model where its kernels take shortcuts). The peak is the fastest of the product kernels
    the step calls, at the step's shapes (bench/products.py), measured right before every repetition;
    the best of these readings is the denominator, and a repetition whose own reading fell below
    `drop_below` of it ran on a busy machine and is left out (counted in `dropped`).
    """
    flops = {s: res[s].extra["flops"] for s in ("ours", "ref")}
    peaks = {s: [p["flops_per_s"] for p in res[s].peaks] for s in flops}
    best = max((p for s in res for p in res[s].peaks), key=lambda p: p["flops_per_s"])
    peak = best["flops_per_s"]
    fraction = {"unit": "executed FLOP/s over the fastest product kernel's FLOP/s, per kept repetition",
                "peak_flops_per_s": peak, "peak_kernel": best["kernel"], "peak_dtype": best["dtype"],
                "drop_below": drop_below, "peaks_before_each": peaks}
    for side in flops:
        kept = [flops[side] / wall / peak for wall, p in zip(res[side].walls, peaks[side]) if p >= drop_below * peak]
        fraction[side] = {**_spread(kept), "kept": len(kept), "dropped": len(peaks[side]) - len(kept)}
    return {"flops_per_step": flops, "hardware_fraction": fraction}


def run_inference(args, wav_path: Path, log) -> dict:
    both = args.host_memory == "both"
    specs = {side: {"bench": "inference", "side": side, "wav": str(wav_path), "size": args.size,
                    "keep_freed_memory": both, "huge_pages": both}
             for side in ("ours", "ref")}
    rows = args.infer_batch * _frames(int(args.infer_seconds * SAMPLE_RATE))
    res = _alternate_with_probe(args, specs, args.reps or 5, _product_shapes(args, rows), "float32", log)
    audio = args.infer_batch * args.infer_seconds
    entry = _speed_entry(res, audio, "audio s/s", "audio s per CPU s", args.threads)
    entry["rtf"] = {"unit": "compute s per audio s (lower is better)",
                    "ours": res["ours"].wall / audio, "ref": res["ref"].wall / audio}
    entry["rtf_cpu"] = {"unit": "CPU s per audio s", "ours": res["ours"].cpu / audio, "ref": res["ref"].cpu / audio}
    entry["peak_rss_mb"] = _memory(res)
    entry["batch"] = f"{args.infer_batch} x {args.infer_seconds:g} s"
    entry["attention_ref"] = _attention(res)
    entry["host_memory"] = args.host_memory
    if not args.no_flops:
        entry.update(_hardware_fraction(res, args.peak_drop))
    return entry


def run_decode(args, name: str, corpus_dir: Path, log) -> dict:
    """decode_lexicon_free or decode_lexicon: both sides in --decode-jobs processes on the same task."""
    from bench import decode_lexicon, decode_lexicon_free, decode_task

    task = decode_task.make_task(args.cache, corpus_dir, args.decode_utts)
    spec = {"bench": name, "task": str(task), "jobs": args.decode_jobs,
            "word_lm": str(corpus.four_gram(args.cache, corpus_dir))}
    if name == "decode_lexicon_free":
        spec["letter_lm"] = str(corpus.letter_lm(args.cache, corpus_dir))
        search = {s: decode_lexicon_free.search(s) for s in ("ours", "ref")}
        reference = "pyctcdecode decode_batch, word 4-gram"
    else:
        spec["lexicon"] = str(corpus.lexicon(args.cache, corpus_dir))
        search = {s: decode_lexicon.search() for s in ("ours", "ref")}
        reference = "torchaudio.models.decoder.ctc_decoder, word 4-gram, same lexicon"
    specs = {side: {**spec, "side": side} for side in ("ours", "ref")}
    res = harness.alternate(specs, args.threads, args.warmup, args.reps or 5, settle_s=args.settle, log=log)
    n = res["ours"].extra["utterances"]
    entry = _speed_entry(res, n, "utterances/s", "utterances per CPU s (all processes)", args.threads)
    _, refs = decode_task.load_task(str(task))
    lm_text = corpus_dir / "lm-text.txt"
    entry.update({"wer_ours": res["ours"].extra["wer"], "wer_ref": res["ref"].extra["wer"],
                  "wer_greedy": decode_task.greedy_wer(str(task)), "wer_unit": "%",
                  "oov_rate": decode_task.oov_rate(refs, lm_text),
                  "test_sentences_in_lm_text": decode_task.sentences_in(refs, lm_text),
                  "utterances": n, "jobs": {"ours": args.decode_jobs, "ref": args.decode_jobs},
                  "reference": reference, "search": search})
    return entry


def run_prepare(args, corpus_dir: Path, log) -> dict:
    root = corpus.prepare_corpus(args.cache, corpus_dir, args.prepare_copies)
    specs = {"ours": {"bench": "prepare", "side": "ours", "corpus": str(root), "jobs": args.prepare_jobs},
             "ref": {"bench": "prepare", "side": "ref", "corpus": str(root), "jobs": args.prepare_jobs},
             "ref_1_process": {"bench": "prepare", "side": "ref_1_process", "corpus": str(root), "jobs": 1}}
    res = harness.alternate(specs, args.threads, args.warmup, args.reps or 5, settle_s=args.settle, log=log)
    files = res["ref"].extra["files"]
    for side in ("ours", "ref_1_process"):
        if res[side].extra["files"] != files:
            raise RuntimeError(f"prepare: {side} counted {res[side].extra['files']} files, the reference {files}")
    entry = _speed_entry(res, files, "files/s", "files per CPU s (all processes)", args.threads)
    one = res["ref_1_process"]
    # ours against the same reads in one process (the baseline before the equal-process one)
    entry["ref_1_process"] = {"files_per_s": files / one.wall, "ratio": one.wall / res["ours"].wall,
                              "cpu_ratio": one.cpu / res["ours"].cpu, "wall_s": one.walls, "cpu_s": one.cpus}
    entry["files"] = files
    entry["jobs"] = {"ours": args.prepare_jobs, "ref": args.prepare_jobs, "ref_1_process": 1}
    return entry


def target_met(key: str, e: dict) -> bool:
    """The ratio reaches its target; for decoding, at an equal or lower WER than the reference's."""
    met = e["ratio"] >= TARGETS[key]
    if "wer_ours" in e:
        met = met and e["wer_ours"] <= e["wer_ref"] + 1e-9
    return met


def _fraction_note(f: dict) -> str:
    def side(x: dict) -> str:
        if x["median"] is None:
            return "none kept"
        return f"{x['min']:.0%}-{x['median']:.0%}-{x['max']:.0%}"
    dropped = f["ours"]["dropped"] + f["ref"]["dropped"]
    kept = f["ours"]["kept"] + f["ref"]["kept"]
    return (f"executed FLOPs at {side(f['ours'])} / {side(f['ref'])} (min-median-max) of "
            f"{f['peak_flops_per_s'] / 1e9:.0f} GFLOP/s ({f['peak_kernel']}); {dropped} of {dropped + kept} "
            "repetitions dropped")


def table(results: dict) -> str:
    """A readable summary: speeds, ratios by wall and by CPU time, each target and whether it is met."""
    rows = [("benchmark", "unit", "ours", "ref", "ratio", "ratio (CPU)", "target", "met", "notes")]
    for key, e in results.items():
        if not isinstance(e, dict) or "ratio" not in e:
            continue
        notes = []
        if "peak_rss_mb" in e:
            m = e["peak_rss_mb"]
            notes.append(f"peak RSS {m['ours']:.0f}/{m['ref']:.0f} MB")
        if "hardware_fraction" in e:
            notes.append(_fraction_note(e["hardware_fraction"]))
        if "attention_ref" in e:
            notes.append(f"ref attention {e['attention_ref']['chosen']}")
        if "rtf" in e:
            notes.append(f"RTF {e['rtf']['ours']:.3f}/{e['rtf']['ref']:.3f}")
        if "wer_ours" in e:
            notes.append(f"WER {e['wer_ours']:.2f}/{e['wer_ref']:.2f}% (greedy {e['wer_greedy']:.2f}%), "
                         f"OOV {e['oov_rate']:.1f}%")
        if "ref_1_process" in e:
            notes.append(f"{e['ref_1_process']['ratio']:.2f}x the 1-process loop")
        target = TARGETS.get(key)
        rows.append((key, e["unit"], f"{e['ours']:.3g}", f"{e['ref']:.3g}", f"{e['ratio']:.2f}x",
                     f"{e['cpu']['ratio']:.2f}x", f">= {target:g}x" if target else "",
                     ("yes" if target_met(key, e) else "MISSED") if target else "", "; ".join(notes)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines) + "\n(ours/ref in the notes; equal settings on both sides)"


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
    import numpy as np

    for name in [b for b in args.bench if b.startswith("pretrain")]:
        wav_path = args.cache / f"pretrain-{args.batch}x{args.seconds:g}.npy"
        np.save(wav_path, corpus.speech_segments(corpus_dir, args.batch, args.seconds))
        precision = name.split("_")[1]
        log(f"{name}: {args.size} pretraining update on {args.batch} x {args.seconds:g} s ({precision})")
        results[name] = run_pretrain(args, precision, wav_path, log)
    if "inference" in args.bench:
        log(f"inference: CTC forward on {args.infer_batch} x {args.infer_seconds:g} s")
        wav_path = args.cache / f"inference-{args.infer_batch}x{args.infer_seconds:g}.npy"
        np.save(wav_path, corpus.speech_segments(corpus_dir, args.infer_batch, args.infer_seconds))
        results["inference"] = run_inference(args, wav_path, log)
    for name in ("decode_lexicon_free", "decode_lexicon"):
        if name in args.bench:
            log(f"{name}: beam search over {args.decode_utts} utterances")
            results[name] = run_decode(args, name, corpus_dir, log)
    if "prepare" in args.bench:
        log("prepare: manifest scan")
        results["prepare"] = run_prepare(args, corpus_dir, log)
    for key in TARGETS:
        if key in results:
            results[key]["target"] = {"ratio": TARGETS[key], "met": target_met(key, results[key])}
    results["machine"]["load_average_end"] = os.getloadavg()
    results["machine"]["total_s"] = time.perf_counter() - started
    results["machine"]["method"] = {"warmup": args.warmup, "settle_s": args.settle, "reps": args.reps,
                                    "host_memory": args.host_memory, "peak_drop": args.peak_drop,
                                    "decode_jobs": args.decode_jobs, "prepare_jobs": args.prepare_jobs}
    print(table(results))
    if args.json:
        from w2vtk.fileio import atomic_write_text

        atomic_write_text(args.json, json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
