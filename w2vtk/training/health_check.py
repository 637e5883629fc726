"""`w2vtk check`: the health rules of `w2vtk.training.health` applied to a finished (or running)
experiment folder, with the evidence for each quantity against its healthy range."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from w2vtk.training.health import (Finding, RunFacts, diagnose_split, healthy_ranges, read_log, split_records,
                                   value_of)


def run_kind(cfg: dict[str, Any]) -> str:
    """"pretrain" or "finetune", from a resolved run config (only pretraining has distractors)."""
    return "pretrain" if "num_negatives" in (cfg.get("task") or {}) else "finetune"


def run_facts(exp_dir: str | Path) -> RunFacts | None:
    """The RunFacts of an experiment folder from its config.yaml; None without a readable one."""
    from w2vtk.config import read_yaml
    from w2vtk.errors import W2vtkError

    path = Path(exp_dir) / "config.yaml"
    if not path.is_file():
        return None
    try:
        cfg = read_yaml(path)
        return RunFacts.from_config(run_kind(cfg), cfg)
    except (W2vtkError, KeyError, TypeError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class Verdict:
    """What `w2vtk check` reports: the symptoms holding at the end, the findings logged during the run,
    and the evidence lines (the last value of each quantity against its healthy range)."""

    holding: list[Finding]
    logged: list[dict[str, Any]]
    evidence: list[str]
    last_step: int

    @property
    def healthy(self) -> bool:
        return not self.holding


def check_run(facts: RunFacts, records: list[dict[str, Any]]) -> Verdict:
    """Judge a whole log: the rules at its last record, plus a run that stopped on non-finite losses."""
    train, valid, logged = split_records(records)
    holding = diagnose_split(facts, train, valid)
    last_step = max([r["step"] for r in train + valid] or [0])
    holding += [Finding(r["health"], r.get("symptom", r["health"]), r["step"], r.get("since", r["step"]),
                        r.get("evidence", ""), r.get("cause", ""), r.get("fix", ""))
                for r in logged if r["health"] == "diverged" and r["step"] >= last_step]
    evidence = []
    for key, rng in healthy_ranges(facts).items():
        for split, recs in (("train", train), ("valid", valid)):
            latest = next((r for r in reversed(recs) if key in r), None)
            if latest is None:
                continue
            value = value_of(latest, key)
            if latest["step"] < rng.start:
                state = "not judged yet"
            else:
                state = "ok" if rng.contains(value) else "OUT OF RANGE"
            evidence.append(f"{key} ({split}, update {latest['step']}): {value:.4g}; healthy: {rng.describe()}: "
                            f"{state}")
    return Verdict(holding, logged, evidence, last_step)


def format_verdict(facts: RunFacts, verdict: Verdict) -> str:
    lines = [f"{facts.kind} run at update {verdict.last_step} of {facts.max_updates} (symptoms must last "
             f"{facts.stretch} updates; learning is judged from update {facts.learning_from})", ""]
    lines += ["evidence:"] + [f"  {e}" for e in verdict.evidence] + [""]
    if verdict.logged:
        lines.append("warnings logged during the run:")
        lines += [f"  update {r['step']}: {r.get('symptom', r['health'])}: {r.get('evidence', '')}"
                  for r in verdict.logged]
        lines.append("")
    if verdict.healthy:
        lines.append("verdict: healthy")
    else:
        lines.append("verdict: UNHEALTHY")
        for x in verdict.holding:
            lines += [f"  {x.symptom}: {x.evidence}", f"    likely cause: {x.cause}", f"    change: {x.fix}"]
    return "\n".join(lines) + "\n"


def check_experiment(exp_dir: str | Path) -> tuple[str, bool]:
    """(the report of `w2vtk check`, whether the run is healthy). Raises W2vtkError naming the missing
    or unreadable file."""
    from w2vtk.errors import W2vtkError

    exp_dir = Path(exp_dir)
    log_path = exp_dir / "log.jsonl"
    if not log_path.is_file():
        raise W2vtkError(f"{log_path}: no such file; pass the --exp-dir of a `w2vtk pretrain` or `w2vtk finetune` run")
    facts = run_facts(exp_dir)
    if facts is None:
        raise W2vtkError(f"{exp_dir / 'config.yaml'}: missing or not a w2vtk run config; pass the --exp-dir of a "
                         "`w2vtk pretrain` or `w2vtk finetune` run")
    records = read_log(log_path)
    if not any("step" in r and "health" not in r for r in records):
        raise W2vtkError(f"{log_path}: no logged updates yet; check again after trainer.log_interval updates")
    verdict = check_run(facts, records)
    return format_verdict(facts, verdict), verdict.healthy
