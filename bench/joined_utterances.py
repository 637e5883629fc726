"""Recordings built by joining test utterances with pauses: two checks where the truth is known.

    python bench/joined_utterances.py --checkpoint CKPT --data DATA --subset test-clean --out OUT \
        [--utterances 90] [--per-recording 15] [--pause noise|zero] [--seed 0]

- WER: greedy decoding of each utterance alone, of the joined recordings window by window
  (w2vtk.long_audio, what `w2vtk transcribe` runs on long files), and of the joined recordings whole,
  all scored against the same words (each side's words in a row against the references in a row).
- Alignment: `w2vtk align` (w2vtk.alignment.align_subset) of the joined recordings to the utterances'
  letters; each utterance's first word start and last word end against where the join put its speech.
  The speech of an utterance runs from the first to the last 10 ms whose RMS exceeds 4 times the
  quietest 5% of its 10 ms frames, 3% of its loudest and 1e-3.

Pauses last 0.3 to 2.0 s (0.5 to 1.5 s before the first utterance), white noise of RMS 0.003 (`noise`)
or digital silence (`zero`). Writes OUT/data (the joined recordings, joined.tsv/.ltr/.wrd), OUT/align
(words.ctm, ...), OUT/utterances.tsv (per utterance: speech start and end, aligned start and end) and
OUT/report.json, and prints the report.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
FRAME = 160  # samples of the 10 ms frames that find an utterance's speech


def speech_span(wav: np.ndarray) -> tuple[int, int]:
    """(sample,) audio -> first and end sample of its speech (see the module docstring)."""
    n = len(wav) // FRAME
    rms = np.sqrt((wav[: n * FRAME].reshape(n, FRAME).astype(np.float64) ** 2).mean(axis=1))
    loud = np.flatnonzero(rms > max(4 * np.percentile(rms, 5), 0.03 * rms.max(), 1e-3))
    return int(loud[0] * FRAME), int(min(len(wav), (loud[-1] + 1) * FRAME))


def pause(seconds: float, kind: str, rng: np.random.Generator) -> np.ndarray:
    n = int(round(seconds * SAMPLE_RATE))
    if kind == "zero":
        return np.zeros(n, dtype=np.float32)
    return (0.003 * rng.standard_normal(n)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True, type=Path, help="prepared data: SUBSET.tsv, .wrd, .ltr, dict.ltr.txt")
    ap.add_argument("--subset", default="test-clean")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--utterances", type=int, default=90, help="taken evenly spread over the subset")
    ap.add_argument("--per-recording", type=int, default=15)
    ap.add_argument("--pause", choices=("noise", "zero"), default="noise")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk-seconds", type=float, default=None, help="default: transcribe's")
    ap.add_argument("--context-seconds", type=float, default=None, help="default: transcribe's")
    args = ap.parse_args()

    from w2vtk.alignment import align_subset
    from w2vtk.audio import read_audio, write_audio
    from w2vtk.decode import compute_logprobs, load_acoustic_model
    from w2vtk.decoding.greedy import GreedyDecoder
    from w2vtk.long_audio import DEFAULT_CHUNK_SECONDS, DEFAULT_CONTEXT_SECONDS, chunked_logprobs
    from w2vtk.manifest import Manifest, read_labels, read_manifest
    from w2vtk.scoring import align

    chunk = args.chunk_seconds or DEFAULT_CHUNK_SECONDS
    context = DEFAULT_CONTEXT_SECONDS if args.context_seconds is None else args.context_seconds
    manifest = read_manifest(args.data / f"{args.subset}.tsv")
    words = read_labels(args.data / f"{args.subset}.wrd", len(manifest), args.data / f"{args.subset}.tsv")
    letters = read_labels(args.data / f"{args.subset}.ltr", len(manifest), args.data / f"{args.subset}.tsv")
    pick = np.unique(np.linspace(0, len(manifest) - 1, min(args.utterances, len(manifest))).round().astype(int))
    rng = np.random.default_rng(args.seed)
    utts = [(manifest.paths[i], read_audio(manifest.abspath(i)), words[i].split(), letters[i].split()) for i in pick]

    data = args.out / "data"
    data.mkdir(parents=True, exist_ok=True)
    recordings = []  # (file name, samples, [(words, speech start s, speech end s)])
    for r in range(0, len(utts), args.per_recording):
        pieces, marks, pos = [pause(rng.uniform(0.5, 1.5), args.pause, rng)], [], 0
        pos = len(pieces[0])
        for _, wav, w, _ in utts[r:r + args.per_recording]:
            on, off = speech_span(wav)
            marks.append((w, (pos + on) / SAMPLE_RATE, (pos + off) / SAMPLE_RATE))
            pieces += [wav, pause(rng.uniform(0.3, 2.0), args.pause, rng)]
            pos += len(wav) + len(pieces[-1])
        name = f"joined{r // args.per_recording:03d}.flac"
        write_audio(data / name, np.concatenate(pieces))
        recordings.append((name, pos, marks))
    groups = [utts[r:r + args.per_recording] for r in range(0, len(utts), args.per_recording)]
    (data / "joined.tsv").write_text(f"{data.resolve()}\n" + "".join(f"{n}\t{size}\n" for n, size, _ in recordings))
    (data / "joined.ltr").write_text("".join(" ".join(s for u in g for s in u[3]) + "\n" for g in groups))
    (data / "joined.wrd").write_text("".join(" ".join(s for u in g for s in u[2]) + "\n" for g in groups))
    shutil.copy(args.data / "dict.ltr.txt", data / "dict.ltr.txt")

    am = load_acoustic_model(args.checkpoint, "cpu")
    greedy = GreedyDecoder(am.vocab)
    refs = [w for u in utts for w in u[2]]

    def wer(hyp: list[str]) -> float:
        return round(100 * align(refs, hyp).counts.errors / len(refs), 2)

    alone = compute_logprobs(am, Manifest(manifest.root, [u[0] for u in utts], [len(u[1]) for u in utts]),
                             progress=False)
    joined = Manifest(data.resolve(), [n for n, _, _ in recordings], [size for _, size, _ in recordings])
    whole = compute_logprobs(am, joined, progress=False)
    chunked = [chunked_logprobs(am, joined.abspath(i), chunk, context, progress=False) for i in range(len(joined))]
    report = {"checkpoint": str(args.checkpoint), "utterances": len(utts), "words": len(refs),
              "recording_seconds": [round(size / SAMPLE_RATE, 1) for _, size, _ in recordings],
              "pause": args.pause, "chunk_seconds": chunk, "context_seconds": context,
              "wer_alone": wer([w for lp in alone for w in greedy.decode(lp)]),
              "wer_chunked": wer([w for lp in chunked for w in greedy.decode(lp)]),
              "wer_joined_whole": wer([w for lp in whole for w in greedy.decode(lp)])}

    align_subset(args.checkpoint, data, "joined", args.out / "align", device="cpu")
    aligned: dict[str, list[tuple[str, float, float]]] = {}
    for line in (args.out / "align" / "words.ctm").read_text().splitlines():
        utt, _, start, dur, word = line.split()[:5]
        aligned.setdefault(utt, []).append((word, float(start), float(start) + float(dur)))
    rows, start_err, end_err = [], [], []
    for name, _, marks in recordings:
        timed, k = aligned[Path(name).stem], 0
        for w, on, off in marks:
            mine, k = timed[k:k + len(w)], k + len(w)
            start_err.append(mine[0][1] - on)
            end_err.append(mine[-1][2] - off)
            rows.append(f"{name}\t{w[0]}\t{w[-1]}\t{on:.3f}\t{off:.3f}\t{mine[0][1]:.3f}\t{mine[-1][2]:.3f}\n")
    s, e = np.abs(start_err) * 1000, np.abs(end_err) * 1000
    report["alignment_ms"] = {"start_median": round(float(np.median(s)), 1), "start_max": round(float(s.max()), 1),
                              "end_median": round(float(np.median(e)), 1), "end_max": round(float(e.max()), 1),
                              "within_60": int(((s <= 60) & (e <= 60)).sum()), "of": len(s)}
    (args.out / "utterances.tsv").write_text("recording\tfirst\tlast\tspeech_start\tspeech_end\tstart\tend\n"
                                             + "".join(rows))
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
