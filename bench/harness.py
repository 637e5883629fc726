"""Timing machinery: ours and the reference each in its own worker process, run alternately.

A worker builds one side of a benchmark, then runs one repetition per `run` request and answers
with its wall time and CPU time (`time.process_time`, all threads of the worker). Only one worker
works at a time, so the two sides never compete for the cores, and each worker's peak resident
memory (`ru_maxrss`) is its own: the import of torch and of the side's libraries, the model, the
optimizer state and the largest step.

    parent                       worker (python -m bench.worker SPEC)
    spawn --------------------> import, build, answer {"ready": ..., "rss_mb": ...}
    "warmup" -----------------> one untimed repetition -> {"wall": s, "cpu": s, ...}
    "run" --------------------> one repetition -> {"wall": s, "cpu": s, ...}
    "flops" ------------------> FLOPs of one repetition (FlopCounterMode) -> {"flops": n}
    "quit" -------------------> {"peak_rss_mb": ...} (before any "flops"), exit
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def thread_env(threads: int) -> dict[str, str]:
    """The environment of a worker: OMP/MKL threads pinned, the repository importable."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


class Worker:
    """A benchmark side in a subprocess; `request` sends one command and returns its JSON answer."""

    def __init__(self, spec: dict, threads: int):
        self.spec = spec
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.worker", json.dumps(spec)], cwd=REPO,
                                     env=thread_env(threads), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.ready = self._answer()

    def _answer(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise RuntimeError(f"benchmark worker {self.spec.get('bench')}/{self.spec.get('side')} exited "
                               f"with status {code} (its error is above)")
        return json.loads(line)

    def request(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self) -> dict:
        answer = self.request("quit")
        self.proc.wait()
        return answer

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class SideResult:
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    peaks: list[dict] = field(default_factory=list)  # ProductProbe.measure() right before each repetition
    extra: dict = field(default_factory=dict)

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpus)


def alternate(specs: dict[str, dict], threads: int, warmup: int, reps: int, flops: bool = False,
              settle_s: float = 0.0, probe: ProductProbe | None = None, log=print) -> dict[str, SideResult]:
    """Start a worker per side, warm each up, then time `reps` repetitions alternating the sides
    (the order flips every round), each after `settle_s` seconds idle: a BASE update of ours started
    right after one of transformers' (which frees and faults in over a million pages per update) ran
    about 5 % slower than after one of its own. With a `probe`, the product kernels' peak is
    measured after each idle time, right before the repetition, and kept with it: on a shared
    machine the peak can halve for a minute, and a repetition whose peak reads low ran on a busy
    machine (run.py drops those from the hardware fraction). Warm-up repetitions are "warmup"
    requests (transformers' sides try each attention kernel in them). Returns each side's times,
    peak RSS and, if asked, FLOPs."""
    workers: dict[str, Worker] = {}
    results = {side: SideResult() for side in specs}
    try:
        for side, spec in specs.items():
            t0 = time.perf_counter()
            workers[side] = Worker(spec, threads)
            results[side].extra.update(workers[side].ready)
            results[side].extra["setup_s"] = time.perf_counter() - t0
        for side, w in workers.items():
            for i in range(warmup):
                ans = w.request("warmup")
                log(f"  {spec_name(w.spec)} warm-up {i + 1}: wall {ans['wall']:.2f} s, cpu {ans['cpu']:.2f} s")
                results[side].extra.setdefault("warmup_walls", []).append(ans["wall"])
        order = list(workers)
        for r in range(reps):
            for side in (order if r % 2 == 0 else order[::-1]):
                time.sleep(settle_s)
                if probe is not None:
                    results[side].peaks.append(probe.measure())
                ans = workers[side].request("run")
                results[side].walls.append(ans["wall"])
                results[side].cpus.append(ans["cpu"])
                for k, v in ans.items():
                    if k not in ("wall", "cpu"):
                        results[side].extra[k] = v
                log(f"  {spec_name(workers[side].spec)} rep {r + 1}/{reps}: wall {ans['wall']:.2f} s, "
                    f"cpu {ans['cpu']:.2f} s")
        if flops:
            for side, w in workers.items():
                results[side].extra["flops"] = w.request("flops")["flops"]
        for side, w in workers.items():
            results[side].extra.update(w.close())
    finally:
        for w in workers.values():
            w.kill()
    return results


def spec_name(spec: dict) -> str:
    return f"{spec['bench']}/{spec['side']}"


class ProductProbe:
    """The fastest product kernel of a step at its shapes (bench/products.py), measurable again and
    again in its own worker (with the benchmark's threads): `measure()` times every kernel at every
    shape `reps` times and keeps the best rate."""

    def __init__(self, threads: int, shapes: list[list[int]], dtype: str = "float32", reps: int = 3,
                 warmup: int = 3):
        self.reps, self.dtype, self.shapes = reps, dtype, shapes
        self.worker = Worker({"bench": "products", "side": dtype, "shapes": shapes, "dtype": dtype,
                              "warmup": warmup}, threads)

    def measure(self) -> dict:
        best: dict[str, float] = {}
        for _ in range(self.reps):
            for name, rate in self.worker.request("run")["rates"].items():
                best[name] = max(rate, best.get(name, 0.0))
        kernel = max(best, key=best.get)
        return {"flops_per_s": best[kernel], "kernel": kernel, "dtype": self.dtype}

    def close(self) -> None:
        try:
            self.worker.close()
        finally:
            self.worker.kill()
