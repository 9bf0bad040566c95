#!/usr/bin/env python3
"""zdtm runner: build, checkpoint/restore and check the zdtm tests (see README.md).

    ./runner.py run -t static/maps06
    ./runner.py run -a -f ns --iters 3 --pre 2
    ./runner.py list
"""

import sys
from pathlib import Path

# run from a plain checkout without installing: the packages sit beside this file
sys.path.insert(0, str(Path(__file__).resolve().parent))

from zdtm.cli import main

if __name__ == "__main__":
    sys.exit(main())
