"""Host memory policy of w2vtk's processes: freed memory is kept for reuse instead of being returned,
and the inference commands back large tensors with huge pages.

glibc serves every large allocation with its own mmap and unmaps it when freed, so each large tensor
of a training step starts as fresh pages that the kernel faults in and zeroes one by one. Keeping
freed memory for reuse avoids that, at the cost of a somewhat higher peak RSS. PyTorch's CPU tuning
guide gets the same from jemalloc or tcmalloc; this needs no preload.

Transparent huge pages (fewer TLB misses over large operands) speed up the inference forward pass;
training gained nothing from them and grew its peak RSS (memory comes in 2 MB at a time), so only
the inference commands take them. bench/README.md has the measurements.

Both settings are process-wide and only change where memory comes from, never what is computed.
`W2VTK_KEEP_FREED_MEMORY=0` in the environment leaves glibc's defaults alone, `W2VTK_HUGE_PAGES=0`
the kernel's page size.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

# mallopt parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_ENV = "W2VTK_KEEP_FREED_MEMORY"
_HUGE_PAGES_ENV = "W2VTK_HUGE_PAGES"
_HUGE_PAGE = 2 << 20


def keep_freed_memory() -> bool:
    """Serve large allocations from the heap and never trim it: freed blocks are reused without page
    faults. Returns whether the setting took effect (glibc only; a no-op elsewhere, or when
    W2VTK_KEEP_FREED_MEMORY=0)."""
    if os.environ.get(_ENV, "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): their allocators differ
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # M_MMAP_MAX 0: no allocation gets its own mapping (the threshold cannot be raised past 32 MB);
    # M_TRIM_THRESHOLD -1: the heap's free top is never given back (mallopt(3)).
    done = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, -1) == 1
    if not done:
        log.debug("mallopt refused; freed memory goes back to the system as usual")
    return done


def back_large_tensors_with_huge_pages() -> bool:
    """Have torch's CPU allocator advise the kernel to back tensors of 2 MB or more with transparent
    huge pages (torch's THP_MEM_ALLOC_ENABLE). torch reads that setting once, at the process's first
    such allocation, so this must run before any: at the start of a command. Returns whether a large
    tensor's memory now carries the advice (False where the kernel offers no transparent huge pages,
    when called too late, or with W2VTK_HUGE_PAGES=0)."""
    if os.environ.get(_HUGE_PAGES_ENV, "1") == "0" or not _kernel_offers_huge_pages():
        return False
    import torch

    ours = "THP_MEM_ALLOC_ENABLE" not in os.environ
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    probe = torch.empty(_HUGE_PAGE, dtype=torch.uint8)
    done = _advised_huge(probe.data_ptr())
    if not done:
        log.debug("large tensors stay on the kernel's page size (torch's allocator made one already)")
        if ours:  # child processes must not inherit a setting that did nothing here
            del os.environ["THP_MEM_ALLOC_ENABLE"]
    return done


def _kernel_offers_huge_pages() -> bool:
    """Transparent huge pages on request: /sys/kernel/mm/transparent_hugepage/enabled reads
    [always] or [madvise]."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:  # not Linux, or no THP support
        return False


def _advised_huge(address: int) -> bool:
    """Whether the mapping holding `address` has MADV_HUGEPAGE ("hg" among its VmFlags in
    /proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(None, 1)[0]
            if "-" in head and not head.endswith(":"):  # a mapping's range: start-end in hex
                start, end = (int(v, 16) for v in head.split("-"))
                inside = start <= address < end
            elif inside and head == "VmFlags:":
                return "hg" in line.split()[1:]
    return False
