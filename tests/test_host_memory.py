"""The host-memory policy of w2vtk's processes (w2vtk.cpu.host_memory): freed large blocks stay in the
process for reuse. Each case runs in a fresh interpreter, as the policy is process-wide."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Allocates and fills 256 MB three times over, and reports the resident size (MB) before, while the
# block lives, after it is freed, and after the next two blocks of the same size came and went.
_PROBE = r"""
import json, sys
import numpy as np
from w2vtk.cpu.host_memory import keep_freed_memory

def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024

kept = keep_freed_memory()
before = rss()
block = np.ones(64 << 20, dtype=np.float32)
live = rss()
del block
freed = rss()
for _ in range(2):
    block = np.ones(64 << 20, dtype=np.float32)
    del block
print(json.dumps({"kept": kept, "before": before, "live": live, "freed": freed, "again": rss()}))
"""


def _probe(env_value: str | None) -> dict:
    env = dict(os.environ)
    env.pop("W2VTK_KEEP_FREED_MEMORY", None)
    if env_value is not None:
        env["W2VTK_KEEP_FREED_MEMORY"] = env_value
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_stay_for_reuse():
    r = _probe(None)
    assert r["kept"] is True
    assert r["live"] - r["before"] > 200
    assert r["freed"] - r["before"] > 200  # not returned to the system ...
    assert r["again"] - r["freed"] < 50  # ... and the next blocks of that size reuse it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_environment_can_keep_glibcs_defaults():
    r = _probe("0")
    assert r["kept"] is False
    assert r["live"] - r["before"] > 200
    assert r["freed"] - r["before"] < 50  # glibc unmaps a block of this size as soon as it is freed


# Reports whether huge pages were taken up, and whether a later 64 MB tensor's mapping carries the advice.
_HUGE_PROBE = r"""
import json, sys
import torch
from w2vtk.cpu.host_memory import _advised_huge, back_large_tensors_with_huge_pages

early = torch.empty(4 << 20) if sys.argv[1] == "late" else None
taken = back_large_tensors_with_huge_pages()
block = torch.ones(16 << 20)
print(json.dumps({"taken": taken, "advised": _advised_huge(block.data_ptr())}))
"""


def _huge_probe(when: str, env_value: str | None = None) -> dict:
    env = dict(os.environ)
    for var in ("W2VTK_HUGE_PAGES", "THP_MEM_ALLOC_ENABLE"):
        env.pop(var, None)
    if env_value is not None:
        env["W2VTK_HUGE_PAGES"] = env_value
    out = subprocess.run([sys.executable, "-c", _HUGE_PROBE, when], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


def _kernel_has_huge_pages() -> bool:
    from w2vtk.cpu.host_memory import _kernel_offers_huge_pages

    return _kernel_offers_huge_pages()


@pytest.mark.skipif(not _kernel_has_huge_pages(), reason="the kernel offers no transparent huge pages")
def test_large_tensors_get_huge_pages_when_asked_first():
    assert _huge_probe("first") == {"taken": True, "advised": True}


@pytest.mark.skipif(not _kernel_has_huge_pages(), reason="the kernel offers no transparent huge pages")
def test_huge_pages_asked_too_late_or_declined_say_so():
    assert _huge_probe("late") == {"taken": False, "advised": False}  # torch read its setting already
    assert _huge_probe("first", "0") == {"taken": False, "advised": False}
