"""Long image fuzz run (the CI run is tests/engine/test_image_fuzz.py, same fuzzer):

    python bench/fuzz_images.py [--count 10000] [--seed S] [--first I] [--tests a,b]

Dumps each seed test once, then restores `--count` seeded mutants (tests/engine/
image_fuzz.py describes mutations and outcomes) and prints the outcome table plus every
mutant that was not refused cleanly or restored harmlessly, each replayable from
(seed, index). Exit 1 on any traceback, hang or wrong restore of a damaged image.
Run as root. Not run by CI.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.engine import cr_support as cr  # the zdtm start/stop protocol
from tests.engine import image_fuzz as fz


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=10)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--tests", default="pipe_data,fork_child")
    ap.add_argument("--chunk", type=int, default=500, help="print the table every N mutants")
    args = ap.parse_args()
    cr.become_subreaper()
    tmp = Path(tempfile.mkdtemp(prefix="fuzz-"))
    seeds = []
    try:
        seeds = [fz.dump_seed(name, tmp / name) for name in args.tests.split(",")]
        start = fz.now()
        total: dict[str, int] = {o: 0 for o in fz.OUTCOMES}
        bad: list[fz.Verdict] = []
        done = 0
        while done < args.count:
            n = min(args.chunk, args.count - done)
            counts, b = fz.run(seeds, n, args.seed, tmp / "m", args.first + done)
            for k, v in counts.items():
                total[k] += v
            bad += b
            done += n
            print(f"-- {done} mutants\n{fz.table(Counter(total), fz.now() - start)}",
                  flush=True)
            for v in b:
                print(f"  #{v.index} {v.outcome}: {v.mutation} -> {v.detail}", flush=True)
        print(f"image fuzz, seed {args.seed}, mutants {args.first}..{args.first + done - 1}, "
              f"seed images {args.tests}")
        print(fz.table(Counter(total), fz.now() - start))
        for v in bad:
            if v.outcome != "forged-wrong":  # printed per chunk above
                print(f"  #{v.index} {v.outcome}: {v.mutation} -> {v.detail}")
        return 1 if any(v.outcome in ("traceback", "hang", "wrong") for v in bad) else 0
    finally:
        for s in seeds:
            s.test.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
