"""BoundedMemo: the per-process answers of a pure function, read once per row of a batch.

Why not ``functools.lru_cache``: the hot paths read these answers for every row of a batch, in
a comprehension (``[memo[key] for key in keys]``), where a hit must be a plain dict lookup; an
LRU call costs several times that in bookkeeping. And the working sets (visitors' addresses:
~100k per run) fit, so emptying the memo when it is full is as good as evicting.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["BoundedMemo"]


class BoundedMemo(dict):
    """``memo[key]``: the answer of ``compute(key)``, computed on the first read (a dict's
    ``__missing__``) and kept; emptied when it holds ``size`` entries. An exception of
    ``compute`` propagates and nothing is kept. Thread-safe as a dict is: two threads may both
    compute a missing answer, which is the same answer."""

    __slots__ = ("_compute", "_size")

    def __init__(self, compute: Callable[[Any], Any], size: int) -> None:
        super().__init__()
        self._compute = compute
        self._size = size

    def __missing__(self, key: Hashable) -> Any:
        value = self._compute(key)
        if len(self) >= self._size:
            self.clear()
        self[key] = value
        return value
