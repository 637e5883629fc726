"""Skips for a missing dependency, told apart from other skips so that a strict run can count them as failures.

A test that cannot run without a Python module or a program says so through `need_module` or
`need_programs`; tests/conftest.py turns such a skip (and a plain `pytest.importorskip`) into a failure
when W2VTK_STRICT_SKIPS=1, as CI sets it. Skips for the platform (no glibc, no transparent huge pages, no
permission to mount) stay skips: no installation would make those tests run.
"""
from __future__ import annotations

import shutil
from types import ModuleType

import pytest

STRICT_SKIPS = "W2VTK_STRICT_SKIPS"
MISSING_DEPENDENCY = "missing dependency: "
# pytest.importorskip's own reason when none is given.
_IMPORTORSKIP = "could not import "


def missing_dependency(what: str, fix: str) -> str:
    """The skip reason for a missing dependency `what`, with the command or step that installs it."""
    return f"{MISSING_DEPENDENCY}{what} ({fix})"


def is_missing_dependency(reason: str) -> bool:
    """Whether a skip reason says that a dependency is missing."""
    return reason.startswith((MISSING_DEPENDENCY, _IMPORTORSKIP))


def need_module(name: str, fix: str = "run bin/setup.sh") -> ModuleType:
    """Import `name`, or skip (the test, or the whole module at module level) as a missing dependency."""
    return pytest.importorskip(name, reason=missing_dependency(f"Python module {name}", fix))


def need_programs(*names: str, fix: str = "run bin/setup.sh") -> None:
    """Skip as a missing dependency unless every program in `names` is on PATH."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        pytest.skip(missing_dependency(f"{', '.join(missing)} not on PATH", fix), allow_module_level=True)
