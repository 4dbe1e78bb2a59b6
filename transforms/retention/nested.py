"""The nested dictionaries the retention jobs build as Beam side inputs, walked leaf by leaf.

The subjects' links (``target -> column -> value -> request ids``,
``transforms.retention.subjects.IndexLinks``) and the lifecycle events
(``key -> value -> event -> time``, ``transforms.retention.lifecycle.IndexEvents``) are combined
by a ``CombineFn`` whose ``merge_accumulators`` re-adds every leaf of each accumulator; one walk
serves both, so that merging cannot differ from adding.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["leaves"]


def leaves(index: Mapping[Any, Any], depth: int) -> Iterator[tuple[Any, ...]]:
    """Every path of ``depth`` keys through the nested mappings of ``index``, with what it
    reaches: ``(key_1, ..., key_depth, value)``, in the mappings' order."""
    for key, value in index.items():
        if depth <= 1:
            yield key, value
        else:
            for path in leaves(value, depth - 1):
                yield key, *path
