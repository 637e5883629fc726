"""transformers' attention kernels, tried in turn: the reference side runs the faster.

transformers offers `attn_implementation="sdpa"` (torch's fused attention, its default) and
"eager" (the products and softmax written out), and which is faster on a CPU depends on the
shapes and on dropout. The warm-up repetitions of the reference alternate the two; the timed
repetitions use the one whose best warm-up was faster, and report both warm-up times.
"""
from __future__ import annotations

import time

CANDIDATES = ("sdpa", "eager")


class FasterAttention:
    """Wraps a step `step()` of a transformers `model`: `warmup()` runs it with the next kernel in
    turn and times it; calling it runs the step with the faster kernel (sdpa if none was tried)."""

    def __init__(self, model, step):
        self.model, self.step = model, step
        self.warmup_s: dict[str, list[float]] = {c: [] for c in CANDIDATES}
        self.chosen: str | None = None
        self._turn = 0

    def warmup(self) -> dict:
        kernel = CANDIDATES[self._turn % len(CANDIDATES)]
        self._turn += 1
        self.model.set_attn_implementation(kernel)
        t0 = time.perf_counter()
        result = self.step()
        self.warmup_s[kernel].append(time.perf_counter() - t0)
        self.chosen = None
        return result

    def choose(self) -> str:
        tried = {c: min(t) for c, t in self.warmup_s.items() if t}
        return min(tried, key=tried.get) if tried else CANDIDATES[0]

    def __call__(self) -> dict:
        if self.chosen is None:
            self.chosen = self.choose()
            self.model.set_attn_implementation(self.chosen)
        result = self.step()
        return {**result, "attention": self.chosen, "attention_warmup_s": self.warmup_s}
