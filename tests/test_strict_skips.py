"""W2VTK_STRICT_SKIPS=1 (set by CI) turns a skip for a missing dependency into a failure, and leaves other skips.

Runs our own tests/conftest.py on a few tiny test files with pytest's pytester.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from dependencies import STRICT_SKIPS

pytest_plugins = ["pytester"]

_TESTS = {
    # pytest.importorskip at module level: a collection-time skip.
    "test_module_level_import": """
        import pytest
        pytest.importorskip("w2vtk_no_such_module")

        def test_uses_it():
            pass
    """,
    "test_helpers": """
        import pytest
        from dependencies import missing_dependency, need_module, need_programs

        def test_program():
            need_programs("w2vtk-no-such-program")

        def test_module():
            need_module("w2vtk_no_such_module")

        @pytest.mark.skipif(True, reason=missing_dependency("a library", "install it"))
        def test_marker():
            pass

        @pytest.fixture
        def tool():
            need_programs("w2vtk-no-such-program")

        def test_fixture(tool):
            pass

        def test_platform():
            pytest.skip("needs a kernel with transparent huge pages")

        @pytest.mark.xfail(reason="a known bug", run=False)
        def test_known_bug():
            pass

        def test_present():
            need_programs("sh")
            need_module("json")
    """,
}


@pytest.fixture
def tiny_suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(Path(__file__).with_name("conftest.py").read_text())
    pytester.makepyfile(**_TESTS)
    return pytester


def test_missing_dependencies_are_skips_by_default(tiny_suite, monkeypatch):
    monkeypatch.delenv(STRICT_SKIPS, raising=False)
    result = tiny_suite.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=6, xfailed=1)
    result.stdout.fnmatch_lines(["*missing dependency: w2vtk-no-such-program not on PATH (run bin/setup.sh)*"])


@pytest.mark.parametrize("value, strict", [("1", True), ("0", False), ("", False)])
def test_strict_skips_fail_missing_dependencies_only(tiny_suite, monkeypatch, value, strict):
    monkeypatch.setenv(STRICT_SKIPS, value)
    result = tiny_suite.runpytest("--continue-on-collection-errors", "-rA")
    if not strict:
        result.assert_outcomes(passed=1, skipped=6, xfailed=1)
        return
    # The module-level importorskip fails collection; a marker's or a fixture's skip fails the setup.
    result.assert_outcomes(passed=1, failed=2, errors=3, skipped=1, xfailed=1)
    result.stdout.fnmatch_lines_random([
        "ERROR test_module_level_import.py*",
        "FAILED test_helpers.py::test_program*",
        "FAILED test_helpers.py::test_module*",
        "ERROR test_helpers.py::test_marker*",
        "ERROR test_helpers.py::test_fixture*",
        "SKIPPED*needs a kernel with transparent huge pages*",
        f"*could not import 'w2vtk_no_such_module'*{STRICT_SKIPS}=1 a missing dependency is a failure*",
        "*missing dependency: a library (install it)*",
    ])
    assert result.ret != 0
