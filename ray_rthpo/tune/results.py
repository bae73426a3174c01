"""Reading values out of Ray Tune results, shared by the searcher and the stopper."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def lookup(result: Mapping[str, Any], key: str) -> Any:
    """``result[key]``, or the nested ``result["a"]["b"]`` for ``key="a/b"``; None when absent.

    Ray hands stoppers the result as the trainable reported it (not flattened) and searchers a
    flattened one, so both a flat ``{"time/total_s": 3.0}`` and a nested
    ``{"time": {"total_s": 3.0}}`` are found.
    """
    if key in result:
        return result[key]
    node: Any = result
    for part in key.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node
