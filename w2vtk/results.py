"""A recipe's results: the error rates `w2vtk decode` left under EXP/decode/ gathered into
EXP/RESULTS.md (a table) and EXP/results.json.

Layout read (the recipes write it):
  EXP/decode/<model>/<subset>/<decoding>/wer.json   one `w2vtk decode` run, e.g.
                                                    decode/pretrained/test-clean/4gram/wer.json
  EXP/decode/<model>/<subset>/<decoding>/hyp.ctm    its words with times and confidences, linked
  EXP/decode/<model>/<tuning>.json                  optional: LM weights found by `w2vtk tune-lm`
  EXP/**/*.png                                      training curves, linked from RESULTS.md

Each error rate gets a 95% bootstrap interval from the per-utterance errors (the ref.trn and hyp.trn
beside its wer.json, re-aligned as `w2vtk decode` scored them), in speaker blocks; two columns that
decoded the same subset and differ in one way (the model, or the decoding) get the paired bootstrap
probability that the better one is better (see w2vtk.error_bars).

<model> names a fine-tuned model (e.g. `pretrained`, `scratch`), <decoding> a way of decoding it
(e.g. `greedy`, `4gram`). The table has a row per subset and a column per model and decoding.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from w2vtk.error_bars import BlockCounts, confidence_interval, probability_better
from w2vtk.errors import W2vtkError
from w2vtk.fileio import atomic_write_text
from w2vtk.scoring import align, characters, read_trn

RESULTS_MD = "RESULTS.md"
RESULTS_JSON = "results.json"
SCORE_FILE = "wer.json"
METRICS = ("wer", "per", "cer", "uer")
# Columns: greedy (no LM) first, then the LM decodings by name.
FIRST_DECODINGS = ("greedy",)


class ResultsError(W2vtkError):
    """No decoding results where the recipe layout says they should be, or an unreadable score file."""


@dataclass(frozen=True)
class Score:
    """One decoding of one subset by one model; `summary` is its wer.json."""

    model: str
    subset: str
    decoding: str
    metric: str
    summary: dict
    directory: Path | None = None  # where its wer.json, ref.trn and hyp.trn are

    @property
    def rate(self) -> float | None:
        return self.summary.get(self.metric)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultsError(f"{path}: unreadable ({e}); rerun the decoding that wrote it") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: expected a JSON object; rerun the decoding that wrote it")
    return data


def read_score(path: Path, model: str, subset: str, decoding: str) -> Score:
    summary = _read_json(path)
    metric = next((m for m in METRICS if m in summary), None)
    if metric is None:
        raise ResultsError(f"{path}: no error rate in it (expected one of {', '.join(METRICS)})")
    if isinstance(summary[metric], bool) or not isinstance(summary[metric], (int, float)):
        raise ResultsError(f"{path}: its {metric} is {summary[metric]!r}, not a number; rerun the decoding that "
                           "wrote it")
    return Score(model, subset, decoding, metric, summary, path.parent)


def block_counts(score: Score) -> BlockCounts | None:
    """Errors and reference tokens per speaker block, from the ref.trn and hyp.trn beside the score's
    wer.json (None where they are missing: no interval is given)."""
    if score.directory is None or not (score.directory / "ref.trn").is_file() or not (
            score.directory / "hyp.trn").is_file():
        return None
    try:
        refs, hyps = read_trn(score.directory / "ref.trn"), read_trn(score.directory / "hyp.trn")
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"{score.directory}: unreadable trn file ({e}); rerun the decoding that wrote it") from None
    if set(refs) != set(hyps):
        raise ResultsError(f"{score.directory}: ref.trn and hyp.trn hold different utterances; rerun the decoding "
                           "that wrote them")
    ids = sorted(refs)
    split = characters if score.metric == "cer" else list
    counts = [align(split(refs[u]), split(hyps[u])).counts for u in ids]
    return BlockCounts.from_utterances(ids, [c.errors for c in counts], [c.ref_tokens for c in counts])


def _key(score: Score) -> tuple[str, str, str]:
    return score.model, score.subset, score.decoding


def comparisons(scores: list[Score], blocks: dict[tuple[str, str, str], BlockCounts]) -> list[dict]:
    """Paired comparisons of the columns that decoded the same subset and differ in the model or in the
    decoding: {subset, better, worse, p_better}, the better one (fewer errors) first."""
    out = []
    for i, first in enumerate(scores):
        for second in scores[i + 1:]:
            if first.subset != second.subset or (first.model != second.model) == (first.decoding != second.decoding):
                continue
            pair = [(first, blocks.get(_key(first))), (second, blocks.get(_key(second)))]
            if pair[0][1] is None or pair[1][1] is None or pair[0][1].blocks != pair[1][1].blocks:
                continue
            (a, ca), (b, cb) = sorted(pair, key=lambda p: p[1].errors.sum())  # the better one first
            out.append({"subset": a.subset, "better": f"{a.model}, {a.decoding}", "worse": f"{b.model}, {b.decoding}",
                        "p_better": round(probability_better(ca, cb), 4)})
    return out


def collect_scores(exp_dir: str | os.PathLike) -> list[Score]:
    """Every EXP/decode/<model>/<subset>/<decoding>/wer.json, sorted by model, subset, decoding."""
    decode_dir = Path(exp_dir) / "decode"
    scores = [read_score(p, *p.relative_to(decode_dir).parts[:3])
              for p in sorted(decode_dir.glob(f"*/*/*/{SCORE_FILE}"))]
    if not scores:
        raise ResultsError(f"{decode_dir}: no <model>/<subset>/<decoding>/{SCORE_FILE} files; "
                           "run the recipe's decoding stage first")
    metrics = {s.metric for s in scores}
    if len(metrics) > 1:
        raise ResultsError(f"{decode_dir}: mixed error rates ({', '.join(sorted(metrics))}) in one table")
    return scores


def collect_tuning(exp_dir: str | os.PathLike) -> dict[str, dict[str, dict]]:
    """{model: {tuning file stem: its JSON}} for the EXP/decode/<model>/*.json files."""
    out: dict[str, dict[str, dict]] = {}
    for path in sorted((Path(exp_dir) / "decode").glob("*/*.json")):
        out.setdefault(path.parent.name, {})[path.stem] = _read_json(path)
    return out


def _columns(scores: list[Score]) -> list[tuple[str, str]]:
    def order(decoding: str) -> tuple[int, str]:
        return (FIRST_DECODINGS.index(decoding) if decoding in FIRST_DECODINGS else len(FIRST_DECODINGS), decoding)

    models = sorted({s.model for s in scores})
    return [(m, d) for m in models for d in sorted({s.decoding for s in scores if s.model == m}, key=order)]


def _cell(score: Score | None) -> str:
    if score is None:
        return "-"
    if score.rate is None:
        return "n/a"
    ci = score.summary.get("ci95")
    return f"{score.rate:.2f}" + (f" ({ci[0]:.2f}-{ci[1]:.2f})" if ci else "")


def results_table(scores: list[Score]) -> str:
    """A Markdown table: a row per subset, a column per (model, decoding); cells are error rates in %,
    with their 95% interval where known."""
    by_key = {(s.subset, s.model, s.decoding): s for s in scores}
    columns = _columns(scores)
    subsets = sorted({s.subset for s in scores})
    metric = scores[0].metric.upper()
    lines = ["| subset | " + " | ".join(f"{m}, {d}" for m, d in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for subset in subsets:
        cells = [_cell(by_key.get((subset, m, d))) for m, d in columns]
        lines.append(f"| {subset} | " + " | ".join(cells) + " |")
    return f"{metric} (%)\n\n" + "\n".join(lines) + "\n"


def _tuning_lines(tuning: dict[str, dict[str, dict]]) -> list[str]:
    """One line per tuning file: the weights found and the dev error rate they gave."""
    lines = []
    for model, files in tuning.items():
        for stem, values in files.items():
            found = ", ".join(f"{k} {values[k]:g}" for k in ("lm_weight", "word_score")
                              if isinstance(values.get(k), (int, float)))
            metric = next((m for m in METRICS if isinstance(values.get(m), (int, float))), None)
            rate = f"{metric.upper()} {values[metric]:.2f}%" if metric else ""
            if rate and "subset" in values:
                rate += f" on {values['subset']}"
            trials = f"best of {values['trials']} trials" if "trials" in values else ""
            detail = ", ".join(w for w in (rate, trials) if w)
            lines.append(f"- {model} ({stem}.json): {found or 'no weights'}" + (f" ({detail})" if detail else ""))
    return lines


def _ctm_lines(exp_dir: Path, scores: list[Score]) -> list[str]:
    """A line per subset linking the hyp.ctm (timed words with confidences) of each of its decodings."""
    lines = []
    for subset in sorted({s.subset for s in scores}):
        links = []
        for s in sorted((s for s in scores if s.subset == subset), key=lambda s: (s.model, s.decoding)):
            ctm = f"decode/{s.model}/{s.subset}/{s.decoding}/hyp.ctm"
            if (exp_dir / ctm).is_file():
                links.append(f"[{s.model}, {s.decoding}]({quote(ctm)})")
        if links:
            lines.append(f"- {subset}: " + ", ".join(links))
    return lines


def _plots(exp_dir: Path) -> list[str]:
    return sorted(p.relative_to(exp_dir).as_posix() for p in exp_dir.rglob("*.png"))


def write_results(exp_dir: str | os.PathLike, title: str | None = None, notes: str | None = None
                  ) -> tuple[Path, Path]:
    """Write EXP/RESULTS.md and EXP/results.json from the decodings under EXP/decode/.

    `notes` (Markdown) goes under the title, e.g. how the corpus and models were made."""
    exp_dir = Path(exp_dir)
    scores = collect_scores(exp_dir)
    blocks = {_key(s): b for s in scores if (b := block_counts(s)) is not None}
    for s in scores:
        ci = confidence_interval(blocks[_key(s)]) if _key(s) in blocks else None
        if ci is not None:
            s.summary["ci95"] = [round(ci[0], 2), round(ci[1], 2)]
    pairs = comparisons(scores, blocks)
    tuning = collect_tuning(exp_dir)
    plots = _plots(exp_dir)
    md = [f"# {title or 'Results: ' + exp_dir.resolve().name}", ""]
    if notes:
        md += [notes.strip(), ""]
    md += [results_table(scores)]
    md += ["Rows are subsets; columns are the fine-tuned model and how it was decoded "
           "(greedy: best path, no LM); in brackets the 95% interval of a bootstrap over speakers. "
           "Details per decoding: decode/<model>/<subset>/<decoding>/.", ""]
    if pairs:
        md += ["Paired bootstrap (Bisani and Ney, 2004): the probability that the first system is better "
               "than the second on the same utterances.", ""]
        md += [f"- {p['subset']}: {p['better']} better than {p['worse']}: p = {p['p_better']:.3f}" for p in pairs]
        md += [""]
    tuned = _tuning_lines(tuning)
    if tuned:
        md += ["LM weights tuned on a dev set:", "", *tuned, ""]
    ctm = _ctm_lines(exp_dir, scores)
    if ctm:
        md += ["Word times and confidences (CTM):", "", *ctm, ""]
    if plots:
        md += ["## Training curves", ""] + [f"![{p}]({quote(p)})" for p in plots] + [""]
    data = {
        "metric": scores[0].metric,
        "results": {},
        "comparisons": pairs,
        "tuning": tuning,
        "plots": plots,
    }
    for s in scores:
        data["results"].setdefault(s.model, {}).setdefault(s.subset, {})[s.decoding] = s.summary
    md_path, json_path = exp_dir / RESULTS_MD, exp_dir / RESULTS_JSON
    atomic_write_text(json_path, json.dumps(data, indent=2) + "\n")
    atomic_write_text(md_path, "\n".join(md))
    return md_path, json_path
