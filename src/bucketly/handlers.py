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
import importlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from .errors import HandlersError

__all__ = [
    "Handler",
    "HandlerInfo",
    "Job",
    "JobSpec",
    "every",
    "load_handlers",
    "view",
]

F = TypeVar("F", bound=Callable[..., Any])


def view(func: F) -> F:
    """Mark a handler method as a named view: ``client.view(bucket, "name", **kwargs)``.

    A view runs serialized with the bucket's events, receives the request's arguments as
    keyword arguments, and returns any MessagePack-able value (sets are sent as arrays).
    """
    func.__bucketly_view__ = True  # type: ignore[attr-defined]
    return func


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

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "doc": self.doc,
            "views": sorted(self.views),
            "jobs": {name: spec.seconds for name, spec in sorted(self.jobs.items())},
        }


def inspect_handler(name: str, cls: type[Handler]) -> HandlerInfo:
    views: dict[str, Callable[..., Any]] = {}
    jobs: dict[str, JobSpec] = {}
    for attr, value in inspect.getmembers(cls):
        if getattr(value, "__bucketly_view__", False):
            views[attr] = value
        spec = getattr(value, "__bucketly_every__", None)
        if isinstance(spec, JobSpec):
            jobs[attr] = spec
    if cls.on_event is Handler.on_event and cls.on_events is Handler.on_events:
        raise HandlersError(f"handler {name} defines neither on_event nor on_events")
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
    )


def load_handlers(spec: str) -> dict[str, HandlerInfo]:
    """Import the handlers module ``spec`` (a path to a .py file, or ``package.module``).

    Returns the ``Handler`` subclasses it defines, by class name. Raises ``HandlersError`` with
    the file and line when the module cannot be imported.
    """
    module = _import(spec)
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
    return found


def _import(spec: str) -> ModuleType:
    path = Path(spec)
    try:
        if spec.endswith(".py") or path.exists():
            if not path.is_file():
                raise HandlersError(f"handlers file {spec!r} does not exist")
            module_name = f"bucketly_handlers_{path.stem}"
            file_spec = importlib.util.spec_from_file_location(module_name, path.resolve())
            if file_spec is None or file_spec.loader is None:
                raise HandlersError(f"cannot load handlers file {spec!r}")
            module = importlib.util.module_from_spec(file_spec)
            sys.modules[module_name] = module
            file_spec.loader.exec_module(module)
            return module
        return importlib.import_module(spec)
    except HandlersError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name and spec.startswith(exc.name):
            raise HandlersError(
                f"handlers module {spec!r} not found: give a path to a .py file or an "
                "importable module name"
            ) from None
        raise HandlersError(_describe_import_error(spec, exc)) from None
    except BaseException as exc:
        raise HandlersError(_describe_import_error(spec, exc)) from None


def _describe_import_error(spec: str, exc: BaseException) -> str:
    where = ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f"{exc.filename}, line {exc.lineno}"
    else:
        frames = traceback.extract_tb(exc.__traceback__)
        user_frames = [f for f in frames if "importlib" not in f.filename]
        if user_frames:
            last = user_frames[-1]
            where = f"{last.filename}, line {last.lineno}"
    detail = f"{type(exc).__name__}: {exc}"
    return f"cannot load handlers module {spec!r}: {detail}" + (f" ({where})" if where else "")

