"""zdtm: a conformance harness for process checkpoint/restore.

The package holds the harness core (test descriptors, build, engine drivers, the per-test
lifecycle, reports) plus the C test library and the test programs under lib/, static/ and
transition/.
"""

import hashlib
from pathlib import Path

#: Directory of this package; the C tests live in its static/ and transition/ subdirectories.
ZDTM_DIR = Path(__file__).resolve().parent
#: Root of the source tree (holds runner.py, flavors/, engine/).
ROOT_DIR = ZDTM_DIR.parent

#: Names this checkout's lock files and work root outside the tree (two checkouts on one
#: machine never share a lock or remove each other's kept work dirs).
CHECKOUT_TAG = hashlib.sha1(str(ROOT_DIR).encode()).hexdigest()[:12]

FLAVORS = ("h", "ns", "uns")


def missing_sources() -> str | None:
    """Why this copy of the package cannot build or find the tests (None in a checkout).

    The harness runs from a checkout (or an editable install of one); pip refuses to build
    a wheel of it (checkout_backend.py). A copy of the Python packages made another way
    (copied, put on PYTHONPATH) has no C library, test sources, descriptors or Makefiles.
    """
    if (ZDTM_DIR / "Makefile").is_file() and (ZDTM_DIR / "lib").is_dir():
        return None
    return (f"{ZDTM_DIR} holds no test sources (a copy of the Python packages only): run it "
            "from a checkout, as ./runner.py or after `pip install -e .` there")
