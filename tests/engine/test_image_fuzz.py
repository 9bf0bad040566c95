"""The bounded image fuzz run of CI (tests/engine/image_fuzz.py): a few hundred seeded
mutants of two real images; zero tracebacks, zero hangs, zero wrong restores of damaged
images. Forged images that pass every check and then run differently are a valid other
image (counted, printed, not failed). Replay one mutant: FUZZ_SEED=S FUZZ_COUNT=1
FUZZ_FIRST=i; the long run is bench/fuzz_images.py."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engine import cr_support as cr
from tests.engine import image_fuzz as fz

SEED = int(os.environ.get("FUZZ_SEED", "10"))
COUNT = int(os.environ.get("FUZZ_COUNT", "300"))
FIRST = int(os.environ.get("FUZZ_FIRST", "0"))


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[fz.Seed]]:
    cr.become_subreaper()
    tmp = tmp_path_factory.mktemp("fuzzseed")
    out: list[fz.Seed] = []
    try:
        for name in ("pipe_data", "fork_child"):
            out.append(fz.dump_seed(name, tmp / name))
        yield out
    finally:
        for s in out:
            s.test.cleanup()


def test_fuzz_mutants(seeds: list[fz.Seed], tmp_path: Path) -> None:
    start = fz.now()
    counts, bad = fz.run(seeds, COUNT, SEED, tmp_path, FIRST)
    print(f"\nimage fuzz, seed {SEED}, mutants {FIRST}..{FIRST + COUNT - 1}\n"
          + fz.table(counts, fz.now() - start), file=sys.stderr)
    for v in bad:
        print(f"  #{v.index} {v.outcome}: {v.mutation} -> {v.detail}", file=sys.stderr)
    assert counts["clean"] > COUNT // 2, "the mutants should mostly be refused"
    failing = [v for v in bad if v.outcome in ("traceback", "hang", "wrong")]
    assert not failing, "\n".join(f"#{v.index} {v.outcome}: {v.mutation} -> {v.detail}"
                                  for v in failing)
