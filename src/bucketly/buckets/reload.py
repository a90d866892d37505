"""Reloading the handlers module, every bucket's state kept (``bucketly reload``, SIGHUP).

Theory of operation. A reload runs on the event loop in one go, with no ``await`` from its first
step to its last: no command on any bucket runs in between, and commands that arrive meanwhile
wait in their connections' buffers, in order, to be handled after it by the new code. It has two
phases.

1. *Prepare*, which changes nothing: import the module afresh (``handlers.load_module``), then,
   for each bucket, make an instance of the new class of the same name with the bucket's config,
   take the old instance's ``snapshot()``, encode it with the snapshot codec (so the state is
   known to survive what a durable snapshot does to it, and its size is known), pass the
   snapshot through the new class's ``migrate`` if its ``state_version`` changed, and
   ``restore`` the new instance from it. Any failure raises ``ReloadFailed`` naming the file,
   the line and the bucket; the old module and every old instance stay as they were.

   The new instance is restored from the snapshot object itself, not from its encoding decoded
   again: decoding rebuilds every hash table (250 ms for a ``UniqueIndex`` of a million pairs,
   against 55 ms to encode it; bench/reload.py). The default ``snapshot()`` copies each
   attribute, so the instances share no top-level container; ``migrate`` and ``restore`` should
   build new objects rather than change nested ones in place, so that a reload refused for a
   later bucket leaves the earlier ones' old state as it was (docs/handlers.md).
2. *Commit*, which cannot fail: every bucket gets its new instance, and its jobs follow the new
   class's ``@every`` methods (a job that keeps its name keeps its schedule).

A job whose slow part is running in a worker thread finishes against the data it took; its
``on_success`` / ``on_failure``, if they are methods of the old instance, are called on the new
one (runtime.py, ``JobRunner``), so a failed flush puts its data back where it now lives.

A durable bucket keeps its promise: records committed before the reload were applied to the old
instance and are in the state carried over; records committed after it are applied to the new
one; its journal on disk does not change. A durable snapshot records the ``state_version`` it
was taken with, so a recovery with the new class migrates an older one (recovery.py).
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import HandlersError, ReloadFailed
from ..handlers import HandlerInfo, HandlersModule, load_module
from .snapshot_codec import pack_state

if TYPE_CHECKING:
    from .runtime import Bucket

__all__ = ["Carried", "Plan", "prepare"]


@dataclass(slots=True)
class Carried:
    """One bucket's new instance, made and restored, not yet in place."""

    bucket: Bucket
    info: HandlerInfo | None
    handler: Any
    #: reloaded (state carried), started (it had no state: it was unavailable), dropped (its
    #: class is gone, ``force``), unavailable (durable and unavailable: a restart recovers it).
    status: str
    seconds: float = 0.0
    state_bytes: int = 0
    migrated_from: int | None = None

    def describe(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "status": self.status,
            "paused_seconds": self.seconds,
            "state_bytes": self.state_bytes,
        }
        if self.migrated_from is not None:
            result["migrated_from"] = self.migrated_from
        return result


@dataclass(slots=True)
class Plan:
    """A prepared reload: the module and every bucket's new instance."""

    module: HandlersModule
    carried: list[Carried]
    started: float

    def describe(self) -> dict[str, Any]:
        return {
            "module": self.module.describe(),
            "paused_seconds": time.perf_counter() - self.started,
            "buckets": {c.bucket.name: c.describe() for c in self.carried},
        }


def prepare(spec: str, buckets: list[Bucket], *, force: bool = False) -> Plan:
    """Import ``spec`` afresh and make every bucket's new instance; raise ``ReloadFailed``
    (changing nothing) if any of it fails."""
    started = time.perf_counter()
    try:
        module = load_module(spec)
    except HandlersError as exc:
        raise ReloadFailed(
            f"reload refused, nothing changed: {exc.message}", detail=exc.detail or {}
        ) from None
    gone = [b for b in buckets if b.row.handler not in module.handlers]
    if gone and not force:
        names = ", ".join(f"{b.name!r} ({b.row.handler})" for b in gone)
        raise ReloadFailed(
            f"reload refused, nothing changed: the new handlers module no longer defines the "
            f"class of buckets {names}; bring the classes back, or reload with force to drop "
            "these buckets' state",
            detail={"bucket": gone[0].name, "file": module.path, "missing": sorted(
                {b.row.handler for b in gone}
            )},
        )
    carried = [_carry(bucket, module) for bucket in buckets]
    return Plan(module, carried, started)


def _carry(bucket: Bucket, module: HandlersModule) -> Carried:
    started = time.perf_counter()
    info = module.handlers.get(bucket.row.handler)
    if info is None:
        return Carried(bucket, None, None, "dropped")
    if bucket.broken is not None and bucket.row.persistence != "memory":
        # Its state is in the database file, unread: a restart with the class restores it.
        return Carried(bucket, None, None, "unavailable")
    try:
        handler = info.cls(dict(bucket.row.config))
    except BaseException as exc:
        raise _failed(bucket, f"{info.name}.__init__", exc) from None
    if bucket.broken is not None:
        return Carried(bucket, info, handler, "started", time.perf_counter() - started)
    old = bucket.info
    assert old is not None
    try:
        state = bucket.handler.snapshot()
    except BaseException as exc:
        raise _failed(bucket, f"{old.name}.snapshot (the old code)", exc) from None
    try:
        data = pack_state(state)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ReloadFailed(
            f"reload refused, nothing changed: bucket {bucket.name!r}: {old.name}.snapshot() "
            f"returned something a snapshot cannot hold ({exc}); give the handler snapshot() "
            "and restore() methods that turn its state into plain data and back "
            "(docs/handlers.md)",
            detail={"bucket": bucket.name},
        ) from None
    migrated_from = None
    try:
        if old.state_version != info.state_version:
            migrated_from = old.state_version
            state = handler.migrate(state, old.state_version)
    except BaseException as exc:
        raise _failed(bucket, f"{info.name}.migrate", exc) from None
    try:
        handler.restore(state)
    except BaseException as exc:
        raise _failed(bucket, f"{info.name}.restore", exc) from None
    return Carried(
        bucket, info, handler, "reloaded", time.perf_counter() - started, len(data),
        migrated_from,
    )


def _failed(bucket: Bucket, what: str, exc: BaseException) -> ReloadFailed:
    """The error for handler code that raised while bucket ``bucket`` was carried over."""
    detail: dict[str, Any] = {"bucket": bucket.name}
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        detail["file"], detail["line"] = frames[-1].filename, frames[-1].lineno
    where = f" ({detail['file']}, line {detail['line']})" if "file" in detail else ""
    return ReloadFailed(
        f"reload refused, nothing changed: bucket {bucket.name!r}: {what} raised "
        f"{type(exc).__name__}: {exc}{where}",
        detail=detail,
    )
