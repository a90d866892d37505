"""How the per-partition results of a view (or a dump) of a partitioned bucket combine.

A handler declares it with ``@bucketly.view(merge=...)`` (and ``Handler.dump_merge``): the name
of a built-in below, or a function of its own. The servers report the declaration
(``list_handlers``, ``bucket_info``); a client routing over several servers gathers one result
per partition and combines them here for a built-in, or has one of the servers run the
handler's own function (the ``merge_view`` op) so that handler code lives only with the
handlers module (docs/scaling.md, "Merged views").

Pure functions of plain data: no I/O, used by the clients and by the server alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["BUILTIN_MERGES", "CUSTOM", "merge_builtin", "merge_name"]

#: How a handler-defined merge is reported on the wire: the client then asks a server to run it.
CUSTOM = "custom"


def _sum(results: list[Any], n: int | None) -> Any:
    return sum(results)


def _max(results: list[Any], n: int | None) -> Any:
    present = [r for r in results if r is not None]
    return max(present) if present else None


def _min(results: list[Any], n: int | None) -> Any:
    present = [r for r in results if r is not None]
    return min(present) if present else None


def _concat(results: list[Any], n: int | None) -> Any:
    merged: list[Any] = []
    for result in results:
        merged.extend(result)
    return merged


def _distinct_sorted(items: list[Any]) -> list[Any]:
    unique: dict[Any, None] = dict.fromkeys(
        tuple(item) if isinstance(item, list) else item for item in items
    )
    try:
        return sorted(unique)
    except TypeError:  # not comparable with each other: first-seen order
        return list(unique)


def _union(results: list[Any], n: int | None) -> Any:
    return _distinct_sorted(_concat(results, n))


def _dict_sum(results: list[Any], n: int | None) -> Any:
    merged: dict[Any, Any] = {}
    for result in results:
        for key, value in result.items():
            merged[key] = merged[key] + value if key in merged else value
    return merged


def _dict_union(results: list[Any], n: int | None) -> Any:
    merged: dict[Any, Any] = {}
    for result in results:
        for key, value in result.items():
            merged[key] = _distinct_sorted([*merged[key], *value]) if key in merged else value
    return merged


def _top(results: list[Any], n: int | None) -> Any:
    totals: dict[Any, Any] = {}
    for result in results:
        for item, value in result:
            key = tuple(item) if isinstance(item, list) else item
            totals[key] = totals[key] + value if key in totals else value
    ranked = sorted(totals.items(), key=lambda pair: pair[1], reverse=True)
    return [list(pair) for pair in (ranked if n is None else ranked[:n])]


#: The built-in merges, by the name a declaration gives. Each takes the list of per-partition
#: results (and ``n``, for ``top``) and returns the merged one.
BUILTIN_MERGES: dict[str, Callable[[list[Any], int | None], Any]] = {
    "sum": _sum,  # numbers: added
    "max": _max,  # the largest (None results ignored)
    "min": _min,  # the smallest (None results ignored)
    "concat": _concat,  # arrays: joined, in the order of the client's server list
    "union": _union,  # arrays (sets): the distinct items, sorted when they can be
    "dict_sum": _dict_sum,  # maps of numbers: keys joined, values of a shared key added
    "dict_union": _dict_union,  # maps of arrays: keys joined, a shared key's arrays united
    "top": _top,  # arrays of [item, value]: values of an item added, the n largest first
}

#: Built-in ``top``'s ``n``: ``"top:10"`` fixes it; plain ``"top"`` takes the view's argument
#: of this name (all of them when the call gives none).
TOP_ARGUMENT = "n"


def merge_name(merge: str | Callable[..., Any]) -> str:
    """Check a ``merge=`` declaration; return how the wire reports it (a name, or ``custom``).

    Raises ``ValueError`` for a name that is no built-in merge.
    """
    if callable(merge):
        return CUSTOM
    base, _, n = merge.partition(":")
    if base not in BUILTIN_MERGES or (n and (base != "top" or not n.isdigit())):
        raise ValueError(
            f"unknown merge {merge!r}: give a function, or one of "
            f"{', '.join(sorted(BUILTIN_MERGES))} (top:N for the N largest)"
        )
    return merge


def merge_builtin(name: str, results: list[Any], args: dict[str, Any] | None = None) -> Any:
    """Merge per-partition ``results`` with the built-in ``name`` (as ``merge_name`` gave it);
    ``args`` are the view's arguments (``top`` may take its ``n`` from them)."""
    base, _, fixed = name.partition(":")
    n: int | None = int(fixed) if fixed else None
    if base == "top" and n is None and args and isinstance(args.get(TOP_ARGUMENT), int):
        n = args[TOP_ARGUMENT]
    return BUILTIN_MERGES[base](results, n)
