"""With CRIU's allowed deviations in force, the checks still fail a real fault in the very
object each allowance concerns.

Real CRIU dumps and restores (wrapped by tests/faulty_engine.py), so its deliberate
differences are there for real (a new time namespace, shared memory as a memfd, a
directory fd without O_DIRECTORY); the fault is applied to the restored tree before S1.
Needs a criu that passes ``criu check``: ``--zdtm-criu-bin PATH`` or ``criu`` in PATH.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from faulty_engine import FaultyEngine

from tests.fake_support import build_fake
from zdtm import lifecycle
from zdtm.desc import TestDesc, discover, discover_external
from zdtm.drivers.criu import CriuEngine
from zdtm.result import CHECK_FAILED, FAIL, PASS, Result


@pytest.fixture(scope="module")
def criu(request: pytest.FixtureRequest) -> CriuEngine:
    lifecycle.prepare_process()
    engine = CriuEngine(request.config.getoption("--zdtm-criu-bin") or shutil.which("criu"))
    why = engine.available()
    if why:
        pytest.skip(f"criu unavailable: {why}")
    return engine


@pytest.fixture(scope="module")
def tests() -> Iterator[dict[str, TestDesc]]:
    """The suite's tests and ext/dirfd (holds an O_DIRECTORY fd: no suite test does)."""
    d = Path(tempfile.mkdtemp(prefix="zdtm-criu-allow-"))
    try:
        os.chmod(d, 0o755)
        build_fake("DIRFD", d / "dirfd")
        yield {t.name: t for t in [*discover(), *discover_external(d)]}
    finally:
        shutil.rmtree(d)


def _run(test: TestDesc, engine: object, root: Path) -> Result:
    return lifecycle.Run(test, "h", engine,  # type: ignore[arg-type]
                         lifecycle.RunOptions(workroot=root)).execute()


def _failed(result: Result, check: str) -> list[str]:
    assert result.outcome == FAIL, result.summary()
    assert (result.phase, result.kind) == ("check", CHECK_FAILED), result.summary()
    problems = [d for d in result.details if d.split(":", 1)[0] in (
        "tree", "task", "rseq", "fds", "maps", "memory", "ns")]
    assert problems and {p.split(":", 1)[0] for p in problems} == {check}, problems
    return problems


CASES = {
    # fault -> (test, check it must fail, allowance that stays allowed beside it)
    "new-uts": ("static/mem_anon", "ns", "ns: allowed (new-time-ns)"),
    "flip-shared": ("static/shmem_datagen_single", "memory", "maps: allowed (shmem-as-memfd)"),
    "dir-nonblock": ("ext/dirfd", "fds", "fds: allowed (dir-fd-flags)"),
}


@pytest.mark.parametrize("fault", sorted(CASES))
def test_allowance_beside_a_real_fault(fault: str, criu: CriuEngine,
                                       tests: dict[str, TestDesc], tmp_path: Path) -> None:
    name, check, allowance = CASES[fault]
    control = _run(tests[name], criu, tmp_path / "control")
    if control.outcome != PASS:
        pytest.skip(f"criu does not pass {name} without a fault: {control.summary()}")
    assert any(allowance in a for a in control.allowed), control.allowed
    engine = FaultyEngine(fault, tmp_path, inner=criu)
    result = _run(tests[name], engine, tmp_path / "faulty")
    assert engine.record, f"the fault was never applied: {result.summary()}"
    problems = _failed(result, check)
    rec = engine.record
    if fault == "new-uts":
        assert problems == [(f"ns: pid {rec['inner_pid']} (mem_anon): uts namespace host -> "
                            f"uts[pid {rec['inner_pid']}]")]
    elif fault == "flip-shared":
        start, end = rec["vma"]
        assert len(problems) == 1 and f"VMA {start:x}..{end:x} rw-s" in problems[0]
        # the same VMA's new name was allowed, its damaged content was not
        assert any(allowance in a and f"VMA {start:x}..{end:x}" in a for a in result.allowed)
    else:
        assert len(problems) == 1 and f"fd {rec['fd']} " in problems[0]
        assert "O_NONBLOCK" in problems[0]
        assert any(allowance in a and f"fd {rec['fd']} " in a for a in result.allowed)
    assert any(allowance in a for a in result.allowed), result.allowed
