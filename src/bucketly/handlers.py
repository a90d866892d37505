"""The handler API users subclass, and loading the handlers module.

A handler class turns events into state. bucketly makes one instance per bucket and calls it from
one place at a time, so handler code never needs a lock::

    import bucketly

    class UniqueClicks(bucketly.Handler):
        def __init__(self, config):
            super().__init__(config)
            self.users = {}

        def on_event(self, event):
            self.users.setdefault(event["url"], set()).add(event["user"])

        @bucketly.view
        def count(self, url):
            return len(self.users.get(url, ()))

        def dump(self):
            return {url: sorted(users) for url, users in self.users.items()}

        @bucketly.every(seconds=60)
        def publish(self):
            ...

See docs/handlers.md for the whole contract, and for the pattern that keeps slow scheduled work
(writing to PostgreSQL) from stalling ingestion while losing nothing when it fails.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar, overload

from .errors import HandlersError
from .merging import merge_name

__all__ = [
    "DUMP_MERGE_KEY",
    "Handler",
    "HandlerInfo",
    "HandlersModule",
    "Job",
    "JobSpec",
    "every",
    "load_handlers",
    "load_module",
    "view",
]

F = TypeVar("F", bound=Callable[..., Any])


@overload
def view(func: F, /) -> F: ...


@overload
def view(*, merge: str | Callable[[list[Any]], Any]) -> Callable[[F], F]: ...


def view(
    func: F | None = None, /, *, merge: str | Callable[[list[Any]], Any] | None = None
) -> Any:
    """Mark a handler method as a named view: ``client.view(bucket, "name", **kwargs)``.

    A view runs serialized with the bucket's events, receives the request's arguments as
    keyword arguments, and returns any MessagePack-able value (sets are sent as arrays).

    ``@bucketly.view(merge=...)`` also says how the results of the partitions of a partitioned
    bucket combine: a built-in (``"sum"``, ``"max"``, ``"min"``, ``"concat"``, ``"union"``,
    ``"dict_sum"``, ``"dict_union"``, ``"top"`` or ``"top:N"``; bucketly.merging) or a function
    taking the list of per-partition results and returning the merged one. A view without it
    is refused on a partitioned bucket (``not_mergeable``) rather than answered by one
    partition.
    """
    if merge is not None:
        merge_name(merge)  # a bad name fails when the module loads, naming it

    def decorate(func: F) -> F:
        func.__bucketly_view__ = True  # type: ignore[attr-defined]
        func.__bucketly_merge__ = merge  # type: ignore[attr-defined]
        return func

    return decorate if func is None else decorate(func)


@dataclass(frozen=True, slots=True)
class JobSpec:
    """How often a scheduled method runs, as declared by ``@every``."""

    seconds: float
    #: Run once more when the server shuts down, so pending work is not left behind.
    run_at_shutdown: bool = True
    #: Configuration key that, when present in the bucket's config, overrides ``seconds``.
    config_key: str | None = None


def every(
    seconds: float, *, run_at_shutdown: bool = True, config_key: str | None = None
) -> Callable[[F], F]:
    """Run a handler method every ``seconds`` seconds (scheduled processing).

    The method itself runs serialized with the bucket's events: it is the place to read or
    take the state to publish. For slow work (I/O) return the slow part instead of doing it:

    - a callable: run in a worker thread, while the bucket goes on taking events;
    - a coroutine: awaited on the server's event loop;
    - a ``Job``: the same, with ``on_success`` / ``on_failure`` callbacks that run serialized
      again, so a failed run can put its data back and nothing is lost.

    A run never overlaps the previous run of the same job. ``config_key`` names a key of the
    bucket's config that overrides ``seconds`` for that bucket (e.g. ``"flush_seconds"``).
    """
    if not seconds > 0:
        raise ValueError("every(seconds=...) needs a positive number of seconds")

    def decorate(func: F) -> F:
        func.__bucketly_every__ = JobSpec(  # type: ignore[attr-defined]
            float(seconds), run_at_shutdown, config_key
        )
        return func

    return decorate


@dataclass(slots=True)
class Job:
    """The slow part of a scheduled run, returned by an ``@every`` method.

    ``work`` is a callable (run in a worker thread) or a coroutine / coroutine function (run on
    the event loop). It must not touch the handler's live state: give it what it needs, taken
    while the ``@every`` method ran. When it finishes, ``on_success(result)`` or
    ``on_failure(exception)`` runs serialized with the bucket's events.
    """

    work: Callable[[], Any] | Awaitable[Any]
    on_success: Callable[[Any], None] | None = None
    on_failure: Callable[[BaseException], None] | None = None


class Handler:
    """Base class of bucket handlers. Subclass it in your handlers module.

    Override ``on_event`` (or ``on_events`` for batches), mark views with ``@bucketly.view``,
    scheduled work with ``@bucketly.every``, and return the whole state from ``dump``.
    ``snapshot`` / ``restore`` let durable buckets save and rebuild the state; their defaults
    work for handlers whose attributes are plain data (dicts, lists, sets, numbers, strings).
    """

    #: The shape of the state ``snapshot()`` returns. Bump it when a new version of the class
    #: changes that shape, and give ``migrate`` to turn the old shape into the new: a reload
    #: (``bucketly reload``) and a durable bucket's recovery call it with a state of an older
    #: version.
    state_version: int = 1

    #: How the dumps of a partitioned bucket's partitions combine into one: a built-in merge
    #: name or a function of the list of dumps, as for ``@view(merge=...)``. None: a merged
    #: dump is refused (``not_mergeable``); per-partition dumps can still be asked for.
    dump_merge: str | Callable[[list[Any]], Any] | None = None

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_event(self, event: Any) -> None:
        """Apply one event. Called in arrival order, never concurrently."""
        raise NotImplementedError(f"{type(self).__name__} must define on_event or on_events")

    def on_events(self, events: list[Any]) -> None:
        """Apply a batch of events in order. Override it when you can beat one call per event.

        The default calls ``on_event`` for each. If it raises, the events before the failing one
        stay applied and the sender is told the index of the one that failed.
        """
        on_event = self.on_event
        for event in events:
            on_event(event)

    def dump(self) -> Any:
        """Return the whole state as MessagePack-able data (for the ``dump`` op)."""
        return self.snapshot()

    def snapshot(self) -> Any:
        """Return the state to save for a durable bucket (called serialized, encoded at once).

        The default is a copy of the instance's attributes (except ``config``), which suits
        handlers whose state is plain data: None, bools, numbers, str, bytes, lists, tuples,
        dicts, sets, frozensets, Counter, deque, ``bucketly.UniqueIndex`` and defaultdict (of
        int, float, str, list, dict, set or Counter), nested in any way; they come back with
        their types. Override it, with ``restore``, for anything else (docs/handlers.md).
        """
        return {k: copy.copy(v) for k, v in vars(self).items() if k != "config"}

    def restore(self, state: Any) -> None:
        """Rebuild the state from what ``snapshot`` returned (the default sets attributes).

        Called at start-up on a fresh instance (``__init__(config)`` has run), before the
        events logged after the snapshot are replayed through ``on_event``/``on_events``.
        """
        for key, value in state.items():
            setattr(self, key, value)

    def state_bytes(self) -> int | float | None:
        """Optional: how many bytes the state takes in memory, about (the metric
        ``bucketly_bucket_state_bytes``). Override it when you can tell cheaply (it is called
        on the event loop at every scrape of the metrics endpoint, serialized with events):
        ``len(self.users) * 200`` is better here than a walk of every object. The default
        reports nothing (None), and the bucket has no such sample.
        """
        return None

    def migrate(self, state: Any, version: int) -> Any:
        """Turn ``state``, saved by a version of this class whose ``state_version`` was
        ``version``, into what this version's ``restore`` takes; return it.

        Called on a fresh instance, before ``restore``, when a reload or a recovery brings
        state of another version (docs/handlers.md, "Reloading handlers"). The default
        returns the state unchanged.
        """
        return state


@dataclass(frozen=True, slots=True)
class HandlerInfo:
    """What the server knows about one handler class."""

    name: str
    cls: type[Handler]
    views: dict[str, Callable[..., Any]]
    jobs: dict[str, JobSpec]
    doc: str
    #: True when the class overrides ``on_events`` (the server then calls it once per batch).
    batches: bool
    #: ``cls.state_version``.
    state_version: int = 1
    #: True when the class overrides ``state_bytes`` (the metrics then ask it).
    reports_state_bytes: bool = False
    #: View name -> its ``merge=`` declaration (built-in name or function); views without one
    #: are absent. The dump's, ``cls.dump_merge``, under ``DUMP_MERGE_KEY``.
    merges: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "doc": self.doc,
            "views": sorted(self.views),
            "jobs": {name: spec.seconds for name, spec in sorted(self.jobs.items())},
            "merges": self.merge_names(),
        }

    def merge_names(self) -> dict[str, str]:
        """How each view (and the dump, under ``DUMP_MERGE_KEY``) merges, as the wire says it."""
        return {name: merge_name(merge) for name, merge in sorted(self.merges.items())}


#: The key of ``HandlerInfo.merges`` for the dump's merge: no view can be called that (views are
#: methods, and ``dump`` is the dump).
DUMP_MERGE_KEY = "dump"


def inspect_handler(name: str, cls: type[Handler]) -> HandlerInfo:
    views: dict[str, Callable[..., Any]] = {}
    jobs: dict[str, JobSpec] = {}
    merges: dict[str, Any] = {}
    for attr, value in inspect.getmembers(cls):
        if getattr(value, "__bucketly_view__", False):
            views[attr] = value
            if getattr(value, "__bucketly_merge__", None) is not None:
                merges[attr] = value.__bucketly_merge__
        spec = getattr(value, "__bucketly_every__", None)
        if isinstance(spec, JobSpec):
            jobs[attr] = spec
    if cls.on_event is Handler.on_event and cls.on_events is Handler.on_events:
        raise HandlersError(f"handler {name} defines neither on_event nor on_events")
    if cls.dump_merge is not None:
        try:
            merge_name(cls.dump_merge)
        except ValueError as exc:
            raise HandlersError(f"handler {name}: dump_merge: {exc}") from None
        merges[DUMP_MERGE_KEY] = cls.dump_merge
    doc = inspect.getdoc(cls) or ""
    if doc == inspect.getdoc(Handler):
        doc = ""
    return HandlerInfo(
        name=name,
        cls=cls,
        views=views,
        jobs=jobs,
        doc=doc.split("\n\n")[0],
        batches=cls.on_events is not Handler.on_events,
        state_version=_state_version(name, cls),
        reports_state_bytes=cls.state_bytes is not Handler.state_bytes,
        merges=merges,
    )


def _state_version(name: str, cls: type[Handler]) -> int:
    version = cls.state_version
    if type(version) is not int or version < 1:
        raise HandlersError(f"handler {name}: state_version must be a positive integer")
    return version


@dataclass(frozen=True, slots=True)
class HandlersModule:
    """One load of the handlers module: its classes, and which version of its file it was."""

    spec: str
    handlers: dict[str, HandlerInfo]
    #: The module's file, its SHA-256 (hex) and modification time, when it has a file.
    path: str | None = None
    sha256: str | None = None
    mtime: float | None = None
    loaded_at: float = field(default_factory=time.time)

    def describe(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "path": self.path,
            "sha256": self.sha256,
            "mtime": self.mtime,
            "loaded_at": self.loaded_at,
            "handlers": sorted(self.handlers),
        }


def load_handlers(spec: str) -> dict[str, HandlerInfo]:
    """Import the handlers module ``spec`` (a path to a .py file, or ``package.module``).

    Returns the ``Handler`` subclasses it defines, by class name. Raises ``HandlersError`` with
    the file and line when the module cannot be imported.
    """
    return load_module(spec).handlers


def load_module(spec: str) -> HandlersModule:
    """Import the handlers module ``spec`` afresh, from its file's current text.

    Each call executes the file again, into a new module object that replaces the old one in
    ``sys.modules`` only if it imports: so a reload that fails leaves the loaded module as it
    was. Raises ``HandlersError`` (with the file and line) when it cannot be imported, or
    defines no handler.
    """
    module, path, source = _import(spec)
    found: dict[str, HandlerInfo] = {}
    for name, value in vars(module).items():
        if (
            isinstance(value, type)
            and issubclass(value, Handler)
            and value is not Handler
            and not name.startswith("_")
            and not inspect.isabstract(value)
        ):
            found[name] = inspect_handler(name, value)
    if not found:
        raise HandlersError(f"handlers module {spec!r} defines no bucketly.Handler subclass")
    if path is None:
        return HandlersModule(spec, found)
    return HandlersModule(
        spec,
        found,
        path=str(path),
        sha256=hashlib.sha256(source).hexdigest(),
        mtime=os.stat(path).st_mtime,
    )


def _import(spec: str) -> tuple[ModuleType, Path | None, bytes]:
    """The module, its file and the bytes it was compiled from."""
    path = Path(spec)
    try:
        if spec.endswith(".py") or path.exists():
            if not path.is_file():
                raise HandlersError(f"handlers file {spec!r} does not exist")
            return _exec_file(f"bucketly_handlers_{path.stem}", path.resolve())
        found = importlib.util.find_spec(spec)
        if found is None:
            raise ModuleNotFoundError(f"No module named {spec!r}", name=spec)
        if found.origin is None or not found.origin.endswith(".py"):
            # Not plain source (a namespace or compiled module): import it as Python does.
            return importlib.import_module(spec), None, b""
        origin = Path(found.origin)
        if spec not in sys.modules:  # the first load: an ordinary import
            return importlib.import_module(spec), origin, origin.read_bytes()
        return _exec_file(spec, origin)
    except HandlersError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name and spec.startswith(exc.name):
            raise HandlersError(
                f"handlers module {spec!r} not found: give a path to a .py file or an "
                "importable module name"
            ) from None
        raise _describe_import_error(spec, exc) from None
    except BaseException as exc:
        raise _describe_import_error(spec, exc) from None


def _exec_file(name: str, path: Path) -> tuple[ModuleType, Path, bytes]:
    """Execute ``path`` as module ``name`` from its text now (never a cached .pyc, which a
    file rewritten within the same second could leave stale), replacing ``sys.modules[name]``
    only once it ran."""
    source = path.read_bytes()
    code = compile(source, str(path), "exec", dont_inherit=True)
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None:
        raise HandlersError(f"cannot load handlers file {str(path)!r}")
    module = importlib.util.module_from_spec(module_spec)
    previous = sys.modules.get(name)
    # In sys.modules while it runs, as an import would have it (dataclasses and pickling look
    # a class's module up there); put back as it was if it fails.
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
    except BaseException:
        if previous is not None:
            sys.modules[name] = previous
        else:
            del sys.modules[name]
        raise
    return module, path, source


def _describe_import_error(spec: str, exc: BaseException) -> HandlersError:
    """The error for a module that failed to import: its ``detail`` has ``file`` and ``line``
    of the innermost frame of the module's own code, when there is one."""
    detail: dict[str, Any] = {}
    if isinstance(exc, SyntaxError) and exc.filename:
        detail = {"file": exc.filename, "line": exc.lineno}
    else:
        frames = traceback.extract_tb(exc.__traceback__)
        here = __file__
        user_frames = [
            f for f in frames if "importlib" not in f.filename and f.filename != here
        ]
        if user_frames:
            last = user_frames[-1]
            detail = {"file": last.filename, "line": last.lineno}
    where = f" ({detail['file']}, line {detail['line']})" if detail else ""
    return HandlersError(
        f"cannot load handlers module {spec!r}: {type(exc).__name__}: {exc}{where}",
        detail=detail or None,
    )
