"""A small labelled corpus for bench/gpu_check.sh, needing only numpy and soundfile: tones with
noise, one letter sequence per file, in fairseq's manifest layout (DATA/train.tsv, .ltr, .wrd,
dict.ltr.txt). Usage: python bench/gpu_data.py OUT_DIR [--files 64]."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf

WORDS = ["ALPHA", "BRAVO", "CHARLIE", "DELTA", "ECHO", "FOXTROT", "GOLF", "HOTEL"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--files", type=int, default=64)
    args = parser.parse_args()
    out = Path(args.out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    rows, letters, words = [], [], []
    for i in range(args.files):
        n = int(rng.integers(4 * 16000, 8 * 16000))
        t = np.arange(n) / 16000
        wav = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.05 * rng.standard_normal(n)
        sf.write(out / "audio" / f"u{i:04d}.flac", wav.astype(np.float32), 16000)
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 6))))
        rows.append(f"audio/u{i:04d}.flac\t{n}")
        words.append(text)
        letters.append(" ".join("|".join(text.split())) + " |")
    for subset in ("train", "valid"):
        (out / f"{subset}.tsv").write_text(f"{out.resolve()}\n" + "\n".join(rows) + "\n")
        (out / f"{subset}.ltr").write_text("\n".join(letters) + "\n")
        (out / f"{subset}.wrd").write_text("\n".join(words) + "\n")
    counts: dict[str, int] = {}
    for line in letters:
        for symbol in line.split():
            counts[symbol] = counts.get(symbol, 0) + 1
    (out / "dict.ltr.txt").write_text("".join(f"{s} {c}\n" for s, c in sorted(counts.items(), key=lambda x: -x[1])))


if __name__ == "__main__":
    main()
