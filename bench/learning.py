"""The learning benchmark: the tiny LibriSpeech recipe on several synthesized corpora and seeds.

    python bench/learning.py --json OUT.json                        # every corpus, seeds 1 and 2
    python bench/learning.py --corpora kjv --seeds 3 --skip-10m     # one corpus, one seed, all labels only

The corpora differ in everything `w2vtk synth librispeech` can vary: sentence source, voices (disjoint
sets of espeak-ng accents and variants), speaking rate, pitch, gain, noise floor, bit depth and
utterance length. In each, dev and test read sentences that training and the LM text never hold.
Each (corpus, seed) runs `recipes/librispeech/run.sh --conf tiny` twice:
  - all labelled: pretraining on train-clean-100, then fine-tuning on all of it, from the pretrained
    model and from scratch, and decoding greedily and with a 4-gram from the held-out LM text;
  - 10 minutes labelled (Libri-light's 10-minute split of the same audio): fine-tuning from that
    pretrained model and from scratch, decoded the same way.
It reports per run the update at which pretraining leaves chance, the final validation accuracy,
the update at which fine-tuning leaves the all-blank plateau, and test-clean WER, greedy and 4-gram,
pretrained against scratch, beside the share of test-clean's words that the LM text lacks; then the
spread (min, median, max) of each over all runs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
W2VTK = os.environ.get("W2VTK", str(ROOT / ".venv" / "bin" / "w2vtk"))
RECIPE = ROOT / "recipes" / "librispeech" / "run.sh"

# One entry per corpus: `w2vtk synth librispeech` options. Voices are disjoint between corpora.
CORPORA: dict[str, list[str]] = {
    "harvard": ["--text", "harvard", "--variants", "m1,m2,m3,m4,m5,m6,m7,f1,f2,f3,f4",
                "--speed", "145:180", "--pitch", "35:65"],
    "kjv": ["--text", "kjv", "--variants", "klatt,klatt3,Andy,Gene,ed,m8,Annie,anika,belinda,f5",
            "--accents", "en-us,en-gb-x-rp,en-029,en-us-nyc", "--speed", "130:200", "--pitch", "25:75",
            "--gain-db", "-12:0", "--snr-db", "25:40", "--bits", "12"],
    "devil": ["--text", "devil", "--variants", "john,max,paul,rob,travis,zac,adam,linda,Alicia,aunty,shelby,steph",
              "--accents", "en,en-gb-scotland,en-gb-x-gbclan,en-gb-x-gbcwmd", "--speed", "160:220",
              "--pitch", "20:80", "--gain-db", "-6:6", "--snr-db", "30:50", "--words", "6:25"],
}
# The same sizes everywhere: the held-out corpus (12 training speakers, about 20 minutes).
SIZES = ["--train-minutes", "21", "--librilight-minutes", "10", "--dev-minutes", "5", "--test-minutes", "5",
         "--speakers", "12", "--eval-speakers", "3", "--eval-sentences", "120"]
CHANCE_MARGIN = 2.0  # pretraining has left chance once its accuracy is twice 1 / (K + 1)
EMITTED_AT_LEAST = 0.5  # fine-tuning has left the blank plateau once greedy output has half the reference's tokens


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--json", type=Path, help="write the per-run results and their spread here")
    p.add_argument("--corpora", default=",".join(CORPORA), help=f"comma-separated, of {', '.join(CORPORA)}")
    p.add_argument("--seeds", default="1,2", help="comma-separated training seeds (default 1,2)")
    p.add_argument("--work", type=Path, default=ROOT / "bench" / ".cache" / "learning",
                   help="corpora, manifests and experiments (default bench/.cache/learning); finished "
                        "stages are skipped on a re-run")
    p.add_argument("--skip-10m", action="store_true", help="only the all-labelled runs")
    p.add_argument("--nj", type=int, default=2, help="parallel jobs for synthesis, preparation and decoding")
    p.add_argument("--recipe-args", default="", help="extra options for run.sh, e.g. \"--pretrain-updates 400\"")
    return p.parse_args(argv)


def _run(cmd: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode != 0:
            sys.exit(f"failed: {' '.join(cmd[:4])} ...; see {log}")


def synthesize(work: Path, name: str, nj: int) -> Path:
    """The corpus `name` under WORK/corpora/NAME (kept between runs)."""
    out = work / "corpora" / name
    if not (out / "lm-text.txt").exists():
        seed = 1 + sorted(CORPORA).index(name)
        _run([W2VTK, "--seed", str(seed), "synth", "librispeech", str(out), *SIZES, *CORPORA[name],
              "--jobs", str(nj)], work / "logs" / f"synth-{name}.log")
    return out


def run_recipe(work: Path, corpus: Path, name: str, seed: int, labelled: str, nj: int, extra: list[str],
               init: Path | None = None) -> Path:
    exp = work / "exp" / f"{name}-seed{seed}-{labelled}"
    cmd = ["bash", str(RECIPE), "--conf", "tiny", "--corpus", str(corpus), "--lm-text", str(corpus / "lm-text.txt"),
           "--librilight", str(corpus / "librispeech_finetuning"), "--labelled", labelled, "--synthetic", "true",
           "--data", str(work / "data" / name), "--exp", str(exp), "--seed", str(seed), "--nj", str(nj),
           "--finetune-args", "trainer.valid_interval=50", *extra]
    if init is not None:
        cmd += ["--init", str(init)]
    _run(cmd, work / "logs" / f"{exp.name}.log")
    return exp


def _records(log: Path, valid: bool) -> list[dict]:
    out = []
    for line in log.read_text().splitlines():
        r = json.loads(line)
        if bool(r.get("valid")) == valid and "step" in r:
            out.append(r)
    return out


def pretraining_summary(exp: Path) -> dict:
    """Update at which training accuracy first reaches CHANCE_MARGIN x chance, and the last validation's
    accuracy."""
    log = exp / "pretrain" / "log.jsonl"
    k = yaml.safe_load((exp / "pretrain" / "config.yaml").read_text())["task"]["num_negatives"]
    train, valid = _records(log, False), _records(log, True)
    chance = 1.0 / (k + 1)
    left = next((r["step"] for r in train if r["accuracy"] >= CHANCE_MARGIN * chance), None)
    updates = max(r["step"] for r in train)
    return {"chance": chance, "leaves_chance_at": left, "updates": updates,
            "leaves_chance_fraction": None if left is None else left / updates,
            "valid_accuracy": valid[-1]["accuracy"] if valid else None}


def finetuning_summary(exp: Path, model: str) -> dict:
    """Update of the first validation whose greedy output has EMITTED_AT_LEAST of the reference's tokens."""
    valid = _records(exp / "finetune" / model / "log.jsonl", True)
    left = next((r["step"] for r in valid if r.get("emitted", 0.0) >= EMITTED_AT_LEAST), None)
    return {"leaves_blank_at": left}


def wer(exp: Path, model: str, subset: str, decoding: str) -> float | None:
    path = exp / "decode" / model / subset / decoding / "wer.json"
    return json.loads(path.read_text())["wer"] if path.exists() else None


def oov_of_test_clean(corpus: Path) -> float:
    """Percentage of test-clean's words that the corpus' LM text (lm-text.txt) never holds."""
    from bench.corpus import transcripts
    from bench.decode_task import oov_rate

    return oov_rate(list(transcripts(corpus, "test-clean").values()), corpus / "lm-text.txt")


def summarize_run(name: str, seed: int, exp_all: Path, exp_10m: Path | None, corpus: Path | None = None) -> dict:
    row = {"corpus": name, "seed": seed, **pretraining_summary(exp_all)}
    if corpus is not None:
        row["test_oov"] = oov_of_test_clean(corpus)
    for labelled, exp in (("all", exp_all), ("10m", exp_10m)):
        if exp is None:
            continue
        for model in ("pretrained", "scratch"):
            row[f"{labelled}_{model}_leaves_blank_at"] = finetuning_summary(exp, model)["leaves_blank_at"]
            for decoding in ("greedy", "4gram"):
                row[f"{labelled}_{model}_{decoding}"] = wer(exp, model, "test-clean", decoding)
        for decoding in ("greedy", "4gram"):
            pre, scr = row[f"{labelled}_pretrained_{decoding}"], row[f"{labelled}_scratch_{decoding}"]
            row[f"{labelled}_relative_reduction_{decoding}"] = (None if pre is None or not scr
                                                                else 100 * (scr - pre) / scr)
    return row


def spread(rows: list[dict]) -> dict:
    """{measure: {min, median, max, n}} over the runs that have it."""
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
        if values and key != "seed":
            out[key] = {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}
    return out


COLUMNS = [("corpus", "corpus", "{}"), ("seed", "seed", "{}"), ("test_oov", "test OOV %", "{:.1f}"),
           ("leaves_chance_at", "chance->", "{}"),
           ("valid_accuracy", "val acc", "{:.2f}"),
           ("all_pretrained_leaves_blank_at", "blank-> pre", "{}"), ("all_scratch_leaves_blank_at", "scr", "{}"),
           ("all_pretrained_greedy", "all pre g", "{:.1f}"), ("all_pretrained_4gram", "pre 4g", "{:.1f}"),
           ("all_scratch_greedy", "scr g", "{:.1f}"), ("all_scratch_4gram", "scr 4g", "{:.1f}"),
           ("10m_pretrained_greedy", "10m pre g", "{:.1f}"), ("10m_pretrained_4gram", "pre 4g", "{:.1f}"),
           ("10m_scratch_greedy", "scr g", "{:.1f}"), ("10m_scratch_4gram", "scr 4g", "{:.1f}"),
           ("10m_relative_reduction_greedy", "rel g %", "{:.0f}"), ("10m_relative_reduction_4gram", "rel 4g %", "{:.0f}")]


def table(rows: list[dict]) -> str:
    def cell(row, key, fmt):
        v = row.get(key)
        return "-" if v is None else fmt.format(v)

    lines = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r, k, f) for k, _, f in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    names = [n for n in args.corpora.split(",") if n]
    unknown = [n for n in names if n not in CORPORA]
    if unknown:
        sys.exit(f"--corpora: unknown {', '.join(unknown)}; choose from {', '.join(CORPORA)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    extra = args.recipe_args.split()
    rows = []
    for name in names:
        corpus = synthesize(args.work, name, args.nj)
        for seed in seeds:
            start = time.time()
            exp_all = run_recipe(args.work, corpus, name, seed, "100h", args.nj, extra)
            minutes_all = (time.time() - start) / 60
            exp_10m = None
            if not args.skip_10m:
                exp_10m = run_recipe(args.work, corpus, name, seed, "10m", args.nj, extra,
                                     init=exp_all / "pretrain" / "checkpoints" / "best.pt")
            row = summarize_run(name, seed, exp_all, exp_10m, corpus)
            row["minutes_all_labelled_run"] = minutes_all
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
    print(table(rows))
    result = {"runs": rows, "spread": spread(rows), "corpora": {n: CORPORA[n] + SIZES for n in names}}
    for key, s in result["spread"].items():
        print(f"{key:34s} min {s['min']:8.3f}  median {s['median']:8.3f}  max {s['max']:8.3f}  (n={s['n']})")
    if args.json:
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
