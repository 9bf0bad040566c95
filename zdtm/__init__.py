"""zdtm: a conformance harness for process checkpoint/restore.

The package holds the harness core (test descriptors, build, engine drivers, the per-test
lifecycle, reports) plus the C test library and the test programs under lib/, static/ and
transition/.
"""

from pathlib import Path

#: Directory of this package; the C tests live in its static/ and transition/ subdirectories.
ZDTM_DIR = Path(__file__).resolve().parent
#: Root of the source tree (holds runner.py, flavors/, engine/).
ROOT_DIR = ZDTM_DIR.parent

FLAVORS = ("h", "ns", "uns")
