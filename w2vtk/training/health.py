"""Is a training run healthy? Rules over the records of EXP/log.jsonl, shared by the live warnings of
`pretrain`/`finetune` and by `w2vtk check`.

A record is one line of the log: a training window (`{"step", "loss", "accuracy", ...}`), a validation
(`{"valid": true, ...}`) or a finding of these rules (`{"health": name, ...}`). Each rule looks at the
records up to the latest one and says whether its symptom holds there. A symptom holds only when it has
lasted a stretch of updates (5% of the run, at least three log windows) and, for quantities that need
time to leave their starting values, only past a point of the schedule: the LR warm-up (and the frozen
Transformer of fine-tuning), a quarter of the run, and at least `MIN_LEARNING_UPDATES`. So a healthy but
short run is never judged on quantities it had no time to move. docs/health.md gives the healthy ranges
and where the thresholds come from.
"""
from __future__ import annotations

import itertools
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

# Codebook collapse: perplexity (summed over the G groups, between G and G x V) below this fraction of
# G x V, and at most this many codes per group in use. Healthy BASE runs sit at 3-4% of G x V (fairseq
# logs: 17.9 of 640 at 1k updates, 26 of 640 at 22k), collapsed ones at about one code per group.
COLLAPSE_FRACTION = 0.01
COLLAPSE_CODES_PER_GROUP = 2.0
# Accuracy "not above chance": below this multiple of 1 / (K + 1).
CHANCE_MARGIN = 1.1
# The tiny demo's accuracy leaves chance after about 100 updates; BASE's after a few hundred.
MIN_LEARNING_UPDATES = 100
# Gradient norms of healthy runs are 0.1-15 (BASE: 1.4 at 22k updates); a dead run logs 0.
GRAD_NEAR_ZERO = 1e-3
GRAD_EXPLODING_FACTOR = 100.0  # times the median norm of the run's earlier windows
# Fine-tuning.
BLANK_OUTPUT_FRACTION = 0.95  # validation utterances whose greedy output is empty
CTC_INFEASIBLE_FRACTION = 0.01  # training targets longer than their frames
WER_MIN_VALIDATIONS = 3


@dataclass(frozen=True)
class RunFacts:
    """What the rules need to know about a run, from its resolved config (EXP/config.yaml)."""

    kind: str  # "pretrain" | "finetune"
    max_updates: int
    warmup_end: int  # the update at which the LR warm-up ends
    log_interval: int
    lr: float
    clip_norm: float
    precision: str
    groups: int = 0  # G
    num_codes: int = 0  # G x V
    num_negatives: int = 0  # K
    diversity_weight: float = 0.0
    latent_temp: tuple[float, float, float] = (2.0, 0.5, 0.999995)
    freeze_updates: int = 0

    @classmethod
    def from_config(cls, kind: str, cfg: dict[str, Any]) -> "RunFacts":
        optim, trainer, model, task = cfg["optim"], cfg["trainer"], cfg["model"], cfg["task"]
        if optim.get("scheduler") == "tri_stage":
            warmup = int(optim["max_updates"] * optim["phase_ratio"][0])
        else:
            warmup = int(optim.get("warmup_updates", 0))
        common = dict(kind=kind, max_updates=int(optim["max_updates"]), warmup_end=warmup,
                      log_interval=int(trainer["log_interval"]), lr=float(optim["lr"]),
                      clip_norm=float(optim.get("clip_norm", 0.0)), precision=str(trainer.get("precision", "fp32")))
        if kind == "pretrain":
            return cls(**common, groups=int(model["latent_groups"]),
                       num_codes=int(model["latent_groups"]) * int(model["latent_vars"]),
                       num_negatives=int(task["num_negatives"]), diversity_weight=float(task["diversity_weight"]),
                       latent_temp=tuple(task["latent_temp"]))
        return cls(**common, freeze_updates=int(task.get("freeze_finetune_updates", 0)))

    @property
    def stretch(self) -> int:
        """Updates a symptom must last before it is reported."""
        return max(3 * self.log_interval, round(0.05 * self.max_updates))

    @property
    def learning_from(self) -> int:
        """The first update at which quantities that need training to move are judged."""
        return max(self.warmup_end, self.freeze_updates, self.max_updates // 4, MIN_LEARNING_UPDATES)

    @property
    def chance(self) -> float:
        return 1.0 / (self.num_negatives + 1)

    @property
    def collapse_level(self) -> float:
        return max(COLLAPSE_FRACTION * self.num_codes, COLLAPSE_CODES_PER_GROUP * self.groups)


@dataclass(frozen=True)
class Finding:
    """A symptom that holds at update `step`, since update `since`."""

    name: str  # short id, e.g. "collapse"
    symptom: str
    step: int
    since: int
    evidence: str
    cause: str
    fix: str

    def record(self) -> dict[str, Any]:
        """The `health` record written to log.jsonl."""
        return {"health": self.name, "step": self.step, "since": self.since, "symptom": self.symptom,
                "evidence": self.evidence, "cause": self.cause, "fix": self.fix}

    def message(self) -> str:
        return (f"health | update {self.step} | {self.symptom}: {self.evidence}. Likely cause: {self.cause}. "
                f"Change: {self.fix}")


@dataclass(frozen=True)
class Range:
    """A quantity's healthy range (either bound may be None), judged from update `start` on."""

    low: float | None
    high: float | None
    start: int
    note: str

    def contains(self, value: float) -> bool:
        return math.isfinite(value) and (self.low is None or value >= self.low) and (
            self.high is None or value <= self.high)

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            span = f"{self.low:.3g} to {self.high:.3g}"
        elif self.low is not None:
            span = f"above {self.low:.3g}"
        else:
            span = f"below {self.high:.3g}"
        return span + (f" from update {self.start}" if self.start else "") + f" ({self.note})"


def healthy_ranges(facts: RunFacts) -> dict[str, Range]:
    """{logged key: healthy range} of the quantities that have one (for `check` and the plots)."""
    ranges = {"grad_norm": Range(GRAD_NEAR_ZERO, None, facts.warmup_end, "not near zero")}
    if facts.kind == "pretrain":
        for key in ("prob_perplexity", "code_perplexity"):
            ranges[key] = Range(facts.collapse_level, facts.num_codes, 0, f"of G x V = {facts.num_codes}")
        ranges["accuracy"] = Range(CHANCE_MARGIN * facts.chance, 1.0, facts.learning_from,
                                   f"chance is 1/(K+1) = {facts.chance:.3g}")
    else:
        ranges["empty_output"] = Range(None, BLANK_OUTPUT_FRACTION,
                                       max(facts.freeze_updates, facts.warmup_end, facts.max_updates // 2),
                                       "share of validation outputs that are all blank")
        ranges["ctc_infeasible"] = Range(None, CTC_INFEASIBLE_FRACTION, 0, "targets longer than their frames")
    return ranges


# ----------------------------------------------------------------------------------------- records

def split_records(records: Iterable[dict[str, Any]]) -> tuple[list[dict], list[dict], list[dict]]:
    """(training windows, validations, health findings), each in log order; a record logged again for
    the same update (a resumed run) replaces the earlier one."""
    train: dict[int, dict] = {}
    valid: dict[int, dict] = {}
    health: list[dict] = []
    for rec in records:
        if "health" in rec:
            health.append(rec)
        elif "step" in rec:
            (valid if rec.get("valid") else train)[int(rec["step"])] = rec
    return [train[s] for s in sorted(train)], [valid[s] for s in sorted(valid)], health


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a log.jsonl; a torn line (a run killed while writing) is skipped."""
    out = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def value_of(rec: dict, key: str) -> float:
    """rec[key] as a float; NaN when it is missing or not a number."""
    v = rec.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _held(records: list[dict], predicate: Callable[[int], bool], start: int, stretch: int) -> int | None:
    """The update since which `predicate(i)` has held for every record i up to the last (records from
    update `start` on), when that covers at least `stretch` updates; else None. A record at update s
    stands for the window of updates since the previous record."""
    first = None
    for i in range(len(records) - 1, -1, -1):
        if records[i]["step"] < start or not predicate(i):
            break
        first = i
    if first is None:
        return None
    before = records[first - 1]["step"] if first > 0 else 0
    since = max(before, start)
    return since if records[-1]["step"] - since >= stretch else None


# ----------------------------------------------------------------------------------------- the rules

def _collapse(f: RunFacts, train: list[dict], valid: list[dict]) -> Finding | None:
    level = f.collapse_level
    since = _held(train, lambda i: min(value_of(train[i], "prob_perplexity"), value_of(train[i], "code_perplexity")) < level,
                  0, f.stretch)
    if since is None:
        return None
    last = train[-1]
    low, hi, _ = f.latent_temp
    return Finding("collapse", "codebook collapse", last["step"], since,
                   f"prob_perplexity {value_of(last, 'prob_perplexity'):.3g} and code_perplexity "
                   f"{value_of(last, 'code_perplexity'):.3g} of G x V = {f.num_codes} (below {level:.3g}) "
                   f"since update {since}",
                   f"the quantizer uses only a few of its codes: the diversity penalty "
                   f"(task.diversity_weight={f.diversity_weight:g}) is too weak for the Gumbel temperature "
                   f"(task.latent_temp={list(f.latent_temp)})",
                   "raise task.diversity_weight (paper: 0.1) and keep the temperature's floor at 0.5 or above "
                   "(task.latent_temp=[2.0,0.5,0.999995])")


def _diversity_rising(f: RunFacts, train: list[dict], valid: list[dict]) -> Finding | None:
    """The diversity loss (1 - perplexity / G x V) rises as the Gumbel temperature anneals in healthy runs
    too (the tiny demo: 0.05 to 0.6; BASE at 22k updates: 0.96). One that has not fallen over a stretch
    while the perplexity is within twice the collapse level is collapse under way."""
    ceiling = 1 - 2 * f.collapse_level / max(f.num_codes, 1)
    since = _held(train, lambda i: value_of(train[i], "diversity") > ceiling, 0, f.stretch)
    if since is None:
        return None
    first = next(r for r in train if r["step"] > since)
    last = train[-1]
    if value_of(last, "diversity") < value_of(first, "diversity") - 0.02:
        return None  # falling again: the penalty is winning
    return Finding("diversity", "diversity loss not falling", last["step"], since,
                   f"the diversity loss went from {value_of(first, 'diversity'):.3g} (update {first['step']}) to "
                   f"{value_of(last, 'diversity'):.3g} (ceiling {1 - f.groups / f.num_codes:.3g}); prob_perplexity "
                   f"{value_of(last, 'prob_perplexity'):.3g} of {f.num_codes}",
                   f"the diversity penalty (task.diversity_weight={f.diversity_weight:g}) does not keep the codebook "
                   "in use: the codebook is collapsing",
                   "raise task.diversity_weight (paper: 0.1); lower optim.lr")


def _accuracy_at_chance(f: RunFacts, train: list[dict], valid: list[dict]) -> Finding | None:
    level = CHANCE_MARGIN * f.chance
    since = _held(train, lambda i: value_of(train[i], "accuracy") < level, f.learning_from, f.stretch)
    if since is None:
        return None
    last = train[-1]
    return Finding("chance", "accuracy at chance", last["step"], since,
                   f"accuracy {value_of(last, 'accuracy'):.3g}, below {level:.3g} ({CHANCE_MARGIN:g} x chance "
                   f"1/(K+1) = {f.chance:.3g}) since update {since}, past the warm-up",
                   f"the model does not learn to tell the true quantized target from its K={f.num_negatives} "
                   f"distractors: a learning rate too small or too large (optim.lr={f.lr:g}), or audio that is "
                   "not 16 kHz speech",
                   "try optim.lr within 1e-4 to 2e-3 (BASE: 5e-4 over 32k warm-up updates); check that the audio "
                   "is 16 kHz speech")


def _grad_near_zero(f: RunFacts, train: list[dict], valid: list[dict]) -> Finding | None:
    since = _held(train, lambda i: value_of(train[i], "grad_norm") < GRAD_NEAR_ZERO, f.warmup_end, f.stretch)
    if since is None:
        return None
    last = train[-1]
    return Finding("grad_zero", "gradient norm near zero", last["step"], since,
                   f"grad_norm {value_of(last, 'grad_norm'):.3g} (below {GRAD_NEAR_ZERO:g}) since update {since}",
                   "nothing reaches the weights: a loss that no longer depends on them (every target alike, "
                   "a collapsed codebook), or a frozen model",
                   "check the other findings; lower optim.lr and restart from an earlier checkpoint")


def _grad_exploding(f: RunFacts, train: list[dict], valid: list[dict]) -> Finding | None:
    earlier = [value_of(r, "grad_norm") for r in itertools.takewhile(lambda r: r["step"] <= f.stretch, train)]
    earlier = [g for g in earlier if math.isfinite(g)]
    if not earlier:
        return None
    level = GRAD_EXPLODING_FACTOR * max(statistics.median(earlier), GRAD_NEAR_ZERO)
    since = _held(train, lambda i: not value_of(train[i], "grad_norm") <= level, f.stretch + 1, f.stretch)
    if since is None:
        return None
    last = train[-1]
    return Finding("grad_exploding", "gradient norm exploding", last["step"], since,
                   f"grad_norm {value_of(last, 'grad_norm'):.3g}, over {GRAD_EXPLODING_FACTOR:g} x its early median "
                   f"{statistics.median(earlier):.3g}, since update {since}",
                   f"updates too large for the model (optim.lr={f.lr:g}, optim.clip_norm={f.clip_norm:g})",
                   "lower optim.lr, set optim.clip_norm (e.g. 5), and restart from an earlier checkpoint")


def _blank_output(f: RunFacts, train: list[dict], valid: list[dict]) -> Finding | None:
    # CTC emits only blanks for a while before it learns the labels (the tiny demo: its first 200 of
    # 800 updates), so this is judged on the second half of the run only.
    start = max(f.freeze_updates, f.warmup_end, f.max_updates // 2)
    judged = [r for r in valid if r["step"] >= start and "empty_output" in r]
    if len(judged) < 2 or not all(value_of(r, "empty_output") >= BLANK_OUTPUT_FRACTION for r in judged[-2:]):
        return None
    last = judged[-1]
    return Finding("blank", "all-blank output", last["step"], judged[-2]["step"],
                   f"{100 * value_of(last, 'empty_output'):.0f}% of validation utterances decode to nothing (greedy) "
                   f"at updates {judged[-2]['step']} and {last['step']}, after the freeze and warm-up",
                   f"CTC has settled on the blank: the learning rate (optim.lr={f.lr:g}) is too small or too large, "
                   "or too few updates with the Transformer unfrozen (task.freeze_finetune_updates="
                   f"{f.freeze_updates})",
                   "train longer, try another optim.lr (paper: 2e-5 to 1e-4 for BASE), lower "
                   "task.freeze_finetune_updates; check the labels match the audio")


def _ctc_infeasible(f: RunFacts, train: list[dict], valid: list[dict]) -> Finding | None:
    window = [r for r in train if r["step"] > train[-1]["step"] - f.stretch] if train else []
    values = [value_of(r, "ctc_infeasible") for r in window]
    values = [v for v in values if math.isfinite(v)]
    if not values or train[-1]["step"] < f.stretch or sum(values) / len(values) <= CTC_INFEASIBLE_FRACTION:
        return None
    share = sum(values) / len(values)
    return Finding("ctc_infinite", "infinite CTC losses", train[-1]["step"], window[0]["step"],
                   f"{100 * share:.1f}% of training targets are longer than their frames (20 ms each) over the "
                   f"last {f.stretch} updates; their CTC loss is infinite and set to 0",
                   "transcripts that do not belong to their audio, audio cut short, or labels too fine for the "
                   "frame rate",
                   "check the .ltr/.phn/.wrd files against the audio, drop utterances whose "
                   "transcript is too long, or use larger units (--labels sp)")


def _wer_not_falling(f: RunFacts, train: list[dict], valid: list[dict]) -> Finding | None:
    metric = next((m for m in ("wer", "per", "cer", "uer") if valid and m in valid[-1]), None)
    if metric is None:
        return None
    judged = [r for r in valid if r["step"] >= f.learning_from and metric in r]
    if len(judged) < WER_MIN_VALIDATIONS or judged[-1]["step"] - judged[0]["step"] < f.max_updates // 4:
        return None
    first, best = value_of(judged[0], metric), min(value_of(r, metric) for r in judged)
    if not best >= first:
        return None
    return Finding("wer_flat", f"{metric.upper()} not falling", judged[-1]["step"], judged[0]["step"],
                   f"validation {metric.upper()} {value_of(judged[-1], metric):.1f}% at update {judged[-1]['step']}, "
                   f"no better than {first:.1f}% at update {judged[0]['step']} ({len(judged)} validations)",
                   f"the learning rate (optim.lr={f.lr:g}) does not suit the model, or it overfits a small "
                   "labelled set",
                   "try another optim.lr; raise task.mask_prob or the dropouts (task.*dropout) for a small set")


PRETRAIN_RULES = (_collapse, _diversity_rising, _accuracy_at_chance, _grad_near_zero, _grad_exploding)
FINETUNE_RULES = (_blank_output, _ctc_infeasible, _wer_not_falling, _grad_near_zero, _grad_exploding)


def diagnose(facts: RunFacts, records: Iterable[dict[str, Any]]) -> list[Finding]:
    """The symptoms that hold at the last of `records`."""
    train, valid, _ = split_records(records)
    return diagnose_split(facts, train, valid)


def diagnose_split(facts: RunFacts, train: list[dict], valid: list[dict]) -> list[Finding]:
    """`diagnose` over the training windows and validations, each in update order."""
    if not train and not valid:
        return []
    rules = PRETRAIN_RULES if facts.kind == "pretrain" else FINETUNE_RULES
    return [x for rule in rules if (x := rule(facts, train, valid)) is not None]


def explain_divergence(facts: RunFacts, records: Iterable[dict[str, Any]], step: int, skipped: int) -> Finding:
    """Why a run whose last `skipped` updates were all non-finite diverged, from what it logged before."""
    train, _, _ = split_records(records)
    norms = [(r["step"], value_of(r, "grad_norm")) for r in train]
    finite = [(s, g) for s, g in norms if math.isfinite(g)]
    overflow = next(((s, g) for s, g in norms if math.isinf(g)), None)
    evidence = f"{skipped} updates in a row had a non-finite loss or gradient"
    too_large = (f"updates too large for the model (optim.lr={facts.lr:g}, optim.clip_norm={facts.clip_norm:g})",
                 "lower optim.lr (by 10x), set optim.clip_norm (e.g. 5)")
    if not finite:
        cause = (f"the run diverged from its first updates: optim.lr={facts.lr:g} is far too large for this model, "
                 "or the audio holds non-finite samples")
        fix = "lower optim.lr (by 10x), set optim.clip_norm, and check the audio files"
    elif overflow is not None and overflow[0] > finite[0][0]:
        evidence += (f"; before it the gradient norm went from {finite[0][1]:.3g} (update {finite[0][0]}) to "
                     f"infinite (update {overflow[0]})")
        cause, fix = too_large
    else:
        start = statistics.median(g for _, g in finite[:3])
        top_step, top = max(finite, key=lambda sg: sg[1])
        if top > 10 * start:
            evidence += f"; before it the gradient norm grew from {start:.3g} to {top:.3g} (update {top_step})"
            cause, fix = too_large
        elif facts.precision != "fp32":
            cause = f"an overflow in {facts.precision} arithmetic"
            fix = "use trainer.precision=fp32 (or bf16 instead of fp16), or lower optim.lr"
        else:
            evidence += f"; the gradient norm was steady ({finite[-1][1]:.3g} at update {finite[-1][0]})"
            cause = "a batch that produced non-finite values: silent or corrupt audio, or a sudden overflow"
            fix = "look for silent or damaged audio files; lower optim.lr or set optim.clip_norm"
    return Finding("diverged", "non-finite losses", step, step - skipped, evidence, cause, fix)


@dataclass
class HealthMonitor:
    """Live rules during training: `observe` each record as it is logged; it returns the findings that
    have just begun to hold (each is reported once until it stops holding). On a resumed run it first
    reads the records already in `log_path`."""

    facts: RunFacts
    log_path: Path | None = None
    train: list[dict[str, Any]] = field(default_factory=list)
    valid: list[dict[str, Any]] = field(default_factory=list)
    holding: set[str] = field(default_factory=set)
    _loaded: bool = False

    @classmethod
    def for_run(cls, kind: str, train_config: dict[str, Any], log_path: Path | None = None) -> "HealthMonitor":
        return cls(RunFacts.from_config(kind, train_config), log_path)

    def observe(self, rec: dict[str, Any]) -> list[Finding]:
        if not self._loaded:
            self._loaded = True
            if self.log_path is not None and self.log_path.exists():
                earlier = [r for r in read_log(self.log_path) if r.get("step", 0) < rec.get("step", 0)]
                self.train, self.valid, health = split_records(earlier)
                self.holding = {r["health"] for r in health}
                self.holding &= {x.name for x in diagnose_split(self.facts, self.train, self.valid)}
        if "health" in rec or "step" not in rec:
            return []
        (self.valid if rec.get("valid") else self.train).append(rec)
        found = diagnose_split(self.facts, self.train, self.valid)
        new = [x for x in found if x.name not in self.holding]
        self.holding = {x.name for x in found}
        return new

    def diverged(self, step: int, skipped: int) -> Finding:
        return explain_divergence(self.facts, self.train, step, skipped)
