"""The bucket runtime: one handler instance per bucket, called from one place at a time.

Theory of operation: every call into a handler (events, views, dumps, the serialized part of a
scheduled job, a job's completion callback) is a plain synchronous call made on the server's one
event-loop thread. Two calls therefore never overlap, whichever connections they came from:
that is the whole serialization mechanism, and it costs no lock, queue hop or task switch. Only
the slow part of a scheduled job (``Job.work``) runs elsewhere, in a worker thread or as a
coroutine, and it is handed data taken from the state, never the live state itself.

Handler code is caught with ``except BaseException``, not ``Exception``: a handler that raises
``SystemExit``, ``KeyboardInterrupt`` or its own ``BaseException`` subclass has failed like any
other, and its client gets ``handler_error``. Let through, such an exception would unwind the
event loop itself and leave a server that neither serves nor exits. (The daemon's own SIGINT and
SIGTERM never arrive as exceptions: the server takes them as signals, in server.py.)
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from ..errors import BadArgument, HandlerError, UnknownHandler, UnknownView
from ..handlers import HandlerInfo, Job, JobSpec
from ..histogram import LATENCY_BOUNDS, Histogram
from ..lograte import LogLimiter
from ..store import BucketRow

if TYPE_CHECKING:
    from .records import BucketJournal
    from .snapshots import BucketSnapshots

__all__ = ["Bucket", "JobRunner"]

log = logging.getLogger("bucketly.buckets")


def _describe(exc: BaseException) -> str:
    """``Type: message (file, line)`` for the innermost frame of the user's code."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    if frames:
        last = frames[-1]
        where = f" ({last.filename}, line {last.lineno})"
    return f"{type(exc).__name__}: {exc}{where}"


class Bucket:
    """A live bucket: its definition, its handler instance and its counters."""

    def __init__(self, row: BucketRow, info: HandlerInfo | None) -> None:
        self.row = row
        self.name = row.name
        self.info = info
        self.events = 0
        self.errors = 0
        #: Seconds each view call took in the handler (the metrics' view-latency histogram).
        self.view_latency = Histogram(LATENCY_BOUNDS)
        #: Handler exceptions are logged at most once a minute per bucket (each is also sent
        #: to the client that caused it), so a broken handler cannot flood the log.
        self._error_log = LogLimiter()
        self._state_log = LogLimiter()
        self.handler: Any = None
        #: Why the bucket cannot take requests (its handler is gone or failed to start).
        self.broken: str | None = None
        self.jobs: dict[str, JobRunner] = {}
        #: Where the journal stands; None while the bucket is not durable (buckets/journal.py).
        self.journal: BucketJournal | None = None
        #: Where its snapshots stand; None unless it is at the snapshot level (snapshots.py).
        self.snapshots: BucketSnapshots | None = None
        #: The last sequence number applied per producer (client), to recognise resends: the
        #: producers heard from in this retention period, and in the one before.
        self.producers: dict[str, int] = {}
        self.retired_producers: dict[str, int] = {}
        self.producers_rotated_at = time.monotonic()
        if info is None:
            self.broken = (
                f"bucket {row.name!r} uses handler {row.handler!r}, which the handlers module "
                "no longer defines"
            )
            return
        try:
            handler = info.cls(dict(row.config))
        except BaseException as exc:
            self.broken = f"handler {row.handler}.__init__ failed: {_describe(exc)}"
            return
        self._use(info, handler)

    def _use(self, info: HandlerInfo, handler: Any) -> None:
        self.info = info
        self.handler = handler
        # Bound once: the send path calls it for every batch.
        self._on_events = handler.on_events if info.batches else None
        self._on_event = handler.on_event

    def replace_handler(self, info: HandlerInfo | None, handler: Any,
                        executor: Executor | None) -> None:
        """Go on with ``handler``, an instance of ``info.cls`` (a reload, buckets/reload.py):
        its jobs follow the new class, and a job that keeps its name keeps its schedule. With
        no ``info``, the bucket's class is gone: it becomes unavailable, its state dropped."""
        if info is None:
            self.info = None
            self.handler = None
            self.broken = (
                f"bucket {self.name!r} uses handler {self.row.handler!r}, which the reloaded "
                "handlers module no longer defines (its state was dropped: reload with force)"
            )
            for runner in self.jobs.values():
                runner.stop()
            self.jobs = {}
            return
        self._use(info, handler)
        self.broken = None
        for name in list(self.jobs):
            if name not in info.jobs:
                self.jobs.pop(name).stop()
        for name, spec in info.jobs.items():
            current = self.jobs.get(name)
            if current is not None:
                current.respec(spec)
            elif executor is not None:
                runner = self.jobs[name] = JobRunner(self, name, spec, executor)
                runner.start()

    def _handler_error(self, message: str, detail: Any = None) -> HandlerError:
        self.errors += 1
        if self._error_log.ready():
            log.warning("bucket %r: %s (%d handler errors so far)", self.name, message, self.errors)
        return HandlerError(message, detail=detail)

    def check(self) -> None:
        if self.broken is not None:
            raise UnknownHandler(self.broken)

    # -- resends ------------------------------------------------------------------------------

    def seen(self, producer: str, seq: int) -> bool:
        """Whether batch ``seq`` of ``producer`` was applied already (a resend)."""
        last = self.producers.get(producer)
        if last is None:
            last = self.retired_producers.get(producer, -1)
        return seq <= last

    def accept(self, producer: str, seq: int) -> bool:
        """Note batch ``seq`` of ``producer`` as applied; False if it was already (a resend)."""
        if self.seen(producer, seq):
            return False
        self.producers[producer] = seq
        return True

    def rotate_producers(self, now: float) -> None:
        """Forget producers silent for a whole retention period (called once per period)."""
        self.retired_producers = self.producers
        self.producers = {}
        self.producers_rotated_at = now

    def producer_table(self) -> dict[str, int]:
        return {**self.retired_producers, **self.producers}

    def restore_producers(self, table: dict[str, int]) -> None:
        self.producers = dict(table)
        self.retired_producers = {}

    def apply(self, events: list[Any]) -> None:
        """Apply a batch of events in order. Raises ``HandlerError`` if the handler raised."""
        on_events = self._on_events
        if on_events is not None:
            try:
                on_events(events)
            except BaseException as exc:
                raise self._handler_error(
                    f"{self.row.handler}.on_events raised {_describe(exc)}",
                    detail={"bucket": self.name},
                ) from None
            self.events += len(events)
            return
        on_event = self._on_event
        applied = 0
        try:
            for event in events:
                on_event(event)
                applied += 1
        except BaseException as exc:
            self.events += applied
            raise self._handler_error(
                f"{self.row.handler}.on_event raised {_describe(exc)} on event {applied} of the "
                f"batch; the {applied} before it were applied",
                detail={"bucket": self.name, "applied": applied},
            ) from None
        self.events += len(events)

    def view(self, name: str, args: dict[str, Any]) -> Any:
        assert self.info is not None
        if name not in self.info.views:
            raise UnknownView(
                f"handler {self.row.handler} of bucket {self.name!r} has no view {name!r}; "
                f"views: {', '.join(sorted(self.info.views)) or 'none'}"
            )
        method = getattr(self.handler, name)
        try:
            inspect.signature(method).bind(**args)
        except TypeError as exc:
            raise BadArgument(f"view {name!r}: {exc}") from None
        started = time.perf_counter()
        try:
            return method(**args)
        except BaseException as exc:
            raise self._handler_error(
                f"view {self.row.handler}.{name} raised {_describe(exc)}"
            ) from None
        finally:
            self.view_latency.observe(time.perf_counter() - started)

    def state_bytes(self) -> float | None:
        """What the handler reports its state takes (``Handler.state_bytes``), or None if it
        reports nothing (or failed to: logged, at most once a minute, not counted as a
        handler error, since no request made the call)."""
        if self.info is None or not self.info.reports_state_bytes or self.handler is None:
            return None
        try:
            size = self.handler.state_bytes()
        except BaseException as exc:
            problem = f"raised {_describe(exc)}"
        else:
            if size is None:
                return None
            if type(size) in (int, float) and size >= 0:
                return float(size)
            problem = f"returned {size!r}, not a number of bytes"
        if self._state_log.ready():
            log.warning("bucket %r: %s.state_bytes %s", self.name, self.row.handler, problem)
        return None

    def dump(self) -> Any:
        try:
            return self.handler.dump()
        except BaseException as exc:
            raise self._handler_error(f"{self.row.handler}.dump raised {_describe(exc)}") from None

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "name": self.name,
            "handler": self.row.handler,
            "config": self.row.config,
            "persistence": self.row.persistence,
            "durable": self.row.durable,
            "created_at": self.row.created_at,
            "events": self.events,
        }
        if self.row.partition is not None:
            info["partition"] = self.row.partition
            # A routing client learns here how the partitions' results combine.
            info["merges"] = self.info.merge_names() if self.info is not None else {}
        if self.broken:
            info["broken"] = self.broken
        return info

    def statistics(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "handler_errors": self.errors,
            "persistence": self.row.persistence,
            "durable": self.row.durable,
            "jobs": {name: job.statistics() for name, job in self.jobs.items()},
        }

    # -- scheduled jobs -------------------------------------------------------------------------

    def start_jobs(self, executor: Executor) -> None:
        if self.broken or self.info is None:
            return
        for name, spec in self.info.jobs.items():
            runner = JobRunner(self, name, spec, executor)
            self.jobs[name] = runner
            runner.start()

    async def stop_jobs(self, *, final_run: bool) -> None:
        """Stop the schedules, wait for running jobs, then (``final_run``) run each once more."""
        runners = list(self.jobs.values())
        for runner in runners:
            runner.stop()
        await asyncio.gather(*(runner.wait_stopped() for runner in runners))
        if final_run:
            for runner in runners:
                if runner.spec.run_at_shutdown:
                    await runner.run_once()


def _interval(bucket: Bucket, spec: JobSpec) -> float:
    """A job's interval: ``spec.seconds``, or the bucket's config value under its key."""
    if spec.config_key and spec.config_key in bucket.row.config:
        value = bucket.row.config[spec.config_key]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
        log.warning(
            "bucket %r: config %r must be a positive number; using %ss",
            bucket.name,
            spec.config_key,
            spec.seconds,
        )
    return spec.seconds


class JobRunner:
    """Runs one ``@every`` method of one bucket on its schedule, and keeps its statistics."""

    def __init__(self, bucket: Bucket, name: str, spec: JobSpec, executor: Executor) -> None:
        self.bucket = bucket
        self.name = name
        self.spec = spec
        self.executor = executor
        self.interval = _interval(bucket, spec)
        self.runs = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.skipped = 0
        self.last_error: str | None = None
        self.last_success_at: float | None = None
        self.last_duration: float | None = None
        self.running = False
        #: A failing job logs the first failure of a series, then at most once a minute, so a
        #: database that is down for an hour does not flood the log (the count is in ``stats``).
        self._failure_log = LogLimiter()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    def respec(self, spec: JobSpec) -> None:
        """The reloaded class declares this job anew: its next wait takes the new interval."""
        self.spec = spec
        self.interval = _interval(self.bucket, spec)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._schedule(), name=f"job {self.bucket.name}.{self.name}"
        )

    def stop(self) -> None:
        self._stop.set()

    async def wait_stopped(self) -> None:
        if self._task is not None:
            await self._task
        await self._idle.wait()

    async def _schedule(self) -> None:
        # Wait on the stop event rather than cancel: a run in progress is never interrupted,
        # so its on_failure always gets the chance to put its data back.
        while True:
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval)
                return
            except TimeoutError:
                pass
            await self.run_once()

    async def run_once(self) -> None:
        """Run the job now, unless it is already running (runs never overlap)."""
        if self.running:
            self.skipped += 1
            return
        handler = self.bucket.handler
        if handler is None:
            return
        self.running = True
        self._idle.clear()
        started = time.monotonic()
        job: Any = None
        try:
            job = getattr(handler, self.name)()
            if (inspect.isawaitable(job) and not isinstance(job, Job)) or (
                callable(job) and not isinstance(job, Job)
            ):
                job = Job(job)
            if isinstance(job, Job):
                result = await self._run_work(job.work)
                if job.on_success is not None:
                    try:
                        self._current(job.on_success, handler)(result)
                    except BaseException as exc:
                        # The work is done: calling on_failure now would make the handler
                        # redo work that succeeded. Report it, count the run as succeeded.
                        log.error(
                            "job %s.%s: on_success raised %s",
                            self.bucket.name,
                            self.name,
                            _describe(exc),
                        )
            elif job is not None:
                raise TypeError(
                    f"an @every method must return None, a callable, a coroutine or a "
                    f"bucketly.Job, not {type(job).__name__}"
                )
        except asyncio.CancelledError:
            raise  # the server stopping the job, not the job failing
        except BaseException as exc:
            self._failed(exc, job if isinstance(job, Job) else None, handler)
        else:
            self._succeeded()
        finally:
            self.runs += 1
            self.last_duration = time.monotonic() - started
            self.running = False
            self._idle.set()

    async def _run_work(self, work: Any) -> Any:
        if inspect.isawaitable(work):
            return await work
        if inspect.iscoroutinefunction(work):
            return await work()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, work)

    def _succeeded(self) -> None:
        if self.consecutive_failures:
            log.info(
                "job %s.%s recovered after %d failed runs",
                self.bucket.name,
                self.name,
                self.consecutive_failures,
            )
        self.consecutive_failures = 0
        self.last_success_at = time.time()

    def _current(self, callback: Callable[[Any], None], started_on: Any) -> Callable[[Any], None]:
        """``callback``, or, when it is a method of the instance the run started on and the
        handlers were reloaded meanwhile, the same method of the bucket's instance now: so a
        failed run puts its data back where the state now lives."""
        now = self.bucket.handler
        if now is started_on or now is None:
            return callback
        if isinstance(callback, functools.partial):
            inner = self._current(callback.func, started_on)
            if inner is callback.func:
                return callback
            return functools.partial(inner, *callback.args, **callback.keywords)
        if inspect.ismethod(callback) and callback.__self__ is started_on:
            name = callback.__func__.__name__
            method = getattr(now, name, None)
            if callable(method):
                return method
            log.error(
                "job %s.%s: the reloaded handler has no method %s; calling the old one",
                self.bucket.name, self.name, name,
            )
        return callback

    def _failed(self, exc: BaseException, job: Job | None, started_on: Any = None) -> None:
        self.failures += 1
        self.consecutive_failures += 1
        self.last_error = _describe(exc)
        if job is not None and job.on_failure is not None:
            try:
                self._current(job.on_failure, started_on)(exc)
            except BaseException as callback_exc:
                log.error(
                    "job %s.%s: on_failure raised %s; its data may be lost",
                    self.bucket.name,
                    self.name,
                    _describe(callback_exc),
                )
        if self._failure_log.ready(anew=self.consecutive_failures == 1):
            log.error(
                "job %s.%s failed (%d in a row): %s",
                self.bucket.name,
                self.name,
                self.consecutive_failures,
                self.last_error,
            )

    def statistics(self) -> dict[str, Any]:
        return {
            "interval": self.interval,
            "runs": self.runs,
            "failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "skipped": self.skipped,
            "running": self.running,
            "last_error": self.last_error,
            "last_success_at": self.last_success_at,
            "last_duration": self.last_duration,
        }
