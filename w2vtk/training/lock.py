"""One run per experiment directory: an advisory lock that names the holder's PID.

The lock is an flock on EXP/.lock, so the kernel releases it when the holder dies, even by kill -9;
a stale file never blocks a restart. The holder removes the file when it finishes, so a run that was
refused, or has ended, leaves nothing behind.

An flock belongs to the open file, which a forked child (a DataLoader worker) shares: a worker that
outlives its killed parent for a few seconds would hold the lock and refuse the restart. So every
forked child closes its copy of the descriptor at once.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from w2vtk.errors import W2vtkError

_HELD: set[int] = set()  # descriptors of the locks this process holds


def _close_in_child() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


class ExpDirLock:
    def __init__(self, exp_dir: str | os.PathLike):
        self.path = Path(exp_dir) / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> "ExpDirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise W2vtkError(f"{self.path.parent}: another run is using this experiment directory (PID "
                                 f"{holder}); wait for it to finish, stop it, or choose another --exp-dir") from None
            # The previous holder may have removed the file between our open and flock: then we hold
            # a lock on a file nobody else can see, so start again on the current one.
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        _HELD.add(fd)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            _HELD.discard(self.fd)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # while still holding the lock, so no one can take the old file
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
