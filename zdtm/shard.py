"""Split a selection of cases into N shards, deterministically, balanced by duration.

Every shard computes the same assignment from the same selection, so N machines given
``--shard 1/N`` ... ``--shard N/N`` run each case exactly once.  Cases are placed longest
first on the least loaded shard (ties: lowest shard number); durations come from an earlier
results file when given, a case it does not know counts as the median of the known ones
(1 s when there are none).
"""

from __future__ import annotations

import statistics
from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

K = TypeVar("K", bound=Hashable)
DEFAULT_SECONDS = 1.0


def parse(text: str) -> tuple[int, int]:
    """``"2/5"`` -> (2, 5); ValueError with a message a person reads."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"shard must be I/N (e.g. 1/4), not {text!r}") from None
    if count < 1 or not 1 <= index <= count:
        raise ValueError(f"shard {text}: need 1 <= I <= N")
    return index, count


def assign(keys: Sequence[K], count: int,
           seconds: Mapping[K, float] | None = None) -> list[list[K]]:
    """The ``count`` shards of ``keys`` (each a list in the input order)."""
    seconds = seconds or {}
    known = [seconds[k] for k in keys if k in seconds]
    fallback = statistics.median(known) if known else DEFAULT_SECONDS
    order = {k: i for i, k in enumerate(keys)}
    # longest first; equal durations keep the input order, so the split is deterministic
    by_length = sorted(keys, key=lambda k: (-seconds.get(k, fallback), order[k]))
    loads = [0.0] * count
    owner: dict[K, int] = {}
    for k in by_length:
        target = min(range(count), key=lambda s: (loads[s], s))
        owner[k] = target
        loads[target] += seconds.get(k, fallback)
    return [[k for k in keys if owner[k] == s] for s in range(count)]


def select(keys: Sequence[K], shard: tuple[int, int],
           seconds: Mapping[K, float] | None = None) -> list[K]:
    """The keys of shard ``(index, count)`` (index from 1)."""
    index, count = shard
    return assign(keys, count, seconds)[index - 1]
