"""Where the ``runner`` fixture (conftest.py) maps its child's RWX region for the in-target
syscall table runner (engine/kernel/blob.py) tests."""

from __future__ import annotations

REGION = 0x3F0000000000
REGION_SIZE = 1 << 20
