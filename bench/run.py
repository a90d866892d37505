"""The bucketly benchmark suite: one command, every system, medians, ratios, a Markdown table.

    python bench/run.py [--quick] [--runs 3] [--events N] [--output docs/performance.md]

Workload: the unique-clicks job (see ``bench/workload.py``), uniform and Zipf-skewed. Every
measurement runs ``--runs`` times, interleaved in rounds (round 1 runs each measurement once,
then round 2 ...), so that a noisy spell on this shared machine hits every system alike. A
number is the median of its runs; a ratio is the median of the per-round ratios against the
reference measured in the same round. A run that miscounts, crashes or times out is a failed
run: it is listed, never averaged in.

Every server and client the suite starts is stopped at the end, on error and on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a script (python bench/run.py): make ``bench`` importable from the repository root.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import bucketly_runners, latency
from bench.handlers import DEFAULT, PLAIN
from bench.harness import REPO, Processes, RunFailed, median, run_driver
from bench.peers import ceilings, redis_peers, statsd_peer
from bench.workload import DISTRIBUTIONS, EVENTS, Workload, WorkloadSpec, describe

STATSD_KEY = "statsd/udp"
#: From this line to the end, docs/performance.md is written by other benchmarks, and kept.
KEPT_BEGIN = "<!-- KEPT: written by other benchmarks, not by bench/run.py -->"
QUICK_EVENTS = 50_000
QUICK_LATENCY_SECONDS = 0.5
LATENCY_SECONDS = 4.0


@dataclass
class Measurement:
    key: str
    system: str
    how: str
    distribution: str | None
    run: Callable[[], dict[str, Any]]
    #: Key of the measurement whose rate this row is compared with (same round), if any.
    reference: str | None = None
    #: The field of a sample that must be present for the run to count as good.
    summary_field: str = "rate"
    samples: list[dict[str, Any] | None] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def values(self, name: str = "rate") -> list[float]:
        return [s[name] for s in self.samples if s is not None and name in s]


@dataclass
class Suite:
    args: argparse.Namespace
    procs: Processes
    workloads: dict[str, str]
    redis: redis_peers.RedisTarget | None = None
    statsd: statsd_peer.StatsdInstall | None = None
    bucketly_missing: str | None = None
    throughput: list[Measurement] = field(default_factory=list)
    latency: list[Measurement] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    described: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, group: list[Measurement], *args: Any, **kwargs: Any) -> None:
        m = Measurement(*args, **kwargs)
        if self.args.only and not any(part in m.key for part in self.args.only.split(",")):
            return
        group.append(m)

    def find(self, key: str) -> Measurement | None:
        return next((m for m in self.throughput if m.key == key), None)


# -- the measurements ----------------------------------------------------------------------


def plan_throughput(suite: Suite) -> None:
    args, procs, add, group = suite.args, suite.procs, suite.add, suite.throughput
    distributions = ["uniform"] if args.quick else list(DISTRIBUTIONS)
    for dist in distributions:
        w = suite.workloads[dist]
        ref = f"bucketly/1conn/batched/memory/{dist}"
        if suite.bucketly_missing is None:
            for durable, conns in ((False, 1), (False, 8), (True, 1), (True, 8)):
                if durable and (dist != "uniform" or (args.quick and conns > 1)):
                    continue
                kind = "durable" if durable else "memory"
                add(group, f"bucketly/{conns}conn/batched/{kind}/{dist}", "bucketly",
                    f"client.send() batched, {conns} connection{'s' * (conns > 1)}, "
                    f"{kind} bucket", dist,
                    _bind(bucketly_runners.bucketly_run, procs, w, "batched", conns, durable),
                    reference=ref)
            add(group, f"bucketly/1conn/batched/memory/plain/{dist}", "bucketly",
                f"client.send() batched, 1 connection, memory bucket, {PLAIN} handler", dist,
                _bind(bucketly_runners.bucketly_run, procs, w, "batched", 1, False, PLAIN),
                reference=ref)
            if dist == "uniform":
                for durable in (False,) if args.quick else (False, True):
                    kind = "durable" if durable else "memory"
                    add(group, f"bucketly/1conn/single/{kind}/{dist}", "bucketly",
                        f"send() + flush() per event (acknowledged), {kind} bucket", dist,
                        _bind(_bucketly_single, procs, w, durable, args.single_events),
                        reference=ref)
        else:
            ref = f"redis/pipelined/{dist}"
        for handler in (DEFAULT, PLAIN):
            add(group, f"inprocess/handler/{handler}/{dist}", "ceiling: in-process handler",
                f"{handler}.on_events on decoded batches, no network, tuned GC", dist,
                _bind(ceilings.inprocess_run, procs, w, "handler", "tuned", handler),
                reference=ref)
        add(group, f"inprocess/decode/tuned/plain/{dist}", "ceiling: in-process handler",
            f"ormsgpack decode + {PLAIN}.on_events, no network, tuned GC", dist,
            _bind(ceilings.inprocess_run, procs, w, "decode", "tuned", PLAIN), reference=ref)
        for gc_mode in ("tuned",) if args.quick else ("tuned", "default"):
            add(group, f"inprocess/decode/{gc_mode}/{dist}", "ceiling: in-process handler",
                f"ormsgpack decode + on_events, no network, {gc_mode} GC", dist,
                _bind(ceilings.inprocess_run, procs, w, "decode", gc_mode), reference=ref)
        for gc_mode in ("tuned", "default"):
            for conns in (1, 8):
                if (dist != "uniform" or args.quick) and (conns, gc_mode) == (8, "default"):
                    continue
                if dist != "uniform" and (conns, gc_mode) != (1, "tuned"):
                    continue
                add(group, f"bare/{conns}conn/{gc_mode}/{dist}", "ceiling: bare asyncio server",
                    f"decode same frames, {conns} connection{'s' * (conns > 1)}, {gc_mode} GC",
                    dist, _bind(ceilings.bare_run, procs, w, conns, gc_mode), reference=ref)
        add(group, f"bare/1conn/tuned/plain/{dist}", "ceiling: bare asyncio server",
            f"decode same frames, 1 connection, tuned GC, {PLAIN} handler", dist,
            _bind(ceilings.bare_run, procs, w, 1, "tuned", PLAIN), reference=ref)
        if suite.redis is not None:
            target = suite.redis.options()
            add(group, f"redis/pipelined/{dist}", "Redis (redis-py)",
                "pipelines of 1,000 SADD url user", dist,
                _bind(_redis_driver, procs, "redis-pipelined", w, target), reference=ref)
            if dist == "uniform":
                add(group, f"redis/single/{dist}", "Redis (redis-py)",
                    "one SADD per event, no pipeline", dist,
                    _bind(_redis_driver, procs, "redis-single", w, target,
                          events=args.single_events), reference=ref)
                add(group, "redis/benchmark", "Redis (redis-benchmark)",
                    f"-P {redis_peers.BENCHMARK_PIPELINE} SADD, 50 connections (C client)",
                    None, _bind(redis_peers.benchmark_run, suite.redis,
                                max(args.events, 200_000)),
                    reference="bucketly/1conn/batched/memory/uniform"
                    if suite.bucketly_missing is None else "redis/pipelined/uniform")
    if suite.statsd is not None:
        rates = statsd_peer.QUICK_RATES if args.quick else statsd_peer.RATES
        seconds = statsd_peer.QUICK_TRIAL_SECONDS if args.quick else statsd_peer.TRIAL_SECONDS
        add(group, STATSD_KEY, f"statsd {suite.statsd.version} (Node)",
            f"sets over UDP, {statsd_peer.PACKET_BYTES}-byte datagrams: highest rate with zero "
            "loss", "uniform",
            _bind(statsd_peer.sweep, procs, suite.statsd, suite.workloads["uniform"], rates,
                  seconds, args.events),
            reference="bucketly/1conn/batched/memory/uniform"
            if suite.bucketly_missing is None else "redis/pipelined/uniform")


def plan_latency(suite: Suite) -> None:
    """After the throughput rounds: ingest at 80% of each system's measured maximum."""
    procs, w = suite.procs, suite.workloads["uniform"]
    seconds = QUICK_LATENCY_SECONDS if suite.args.quick else LATENCY_SECONDS
    targets: list[tuple[str, str, str, Callable[[], Any], str, str]] = []
    if suite.bucketly_missing is None:
        targets.append(("bucketly", "bucketly/1conn/batched/memory/uniform",
                        "client.view(count) / client.send() batched",
                        _bucketly_target, "bucketly-ingest", "bucketly-view"))
    targets.append(("ceiling: bare asyncio server", "bare/1conn/tuned/uniform",
                    "view frame / pre-encoded send frames", _bare_target(procs),
                    "bare-ingest", "bare-view"))
    if suite.redis is not None:
        targets.append(("Redis (redis-py)", "redis/pipelined/uniform",
                        "SCARD / pipelines of 1,000 SADD", _redis_target(suite.redis),
                        "redis-ingest", "redis-view"))
    for system, max_key, how, target, ingest_kind, view_kind in targets:
        source = suite.find(max_key)
        if source is None or not source.values():
            suite.notes.append(f"view latency of {system}: skipped, no maximum rate ({max_key})")
            continue
        rate = latency.INGEST_SHARE * median(source.values())
        suite.add(suite.latency, f"latency/{max_key}", system, how, "uniform",
                  _bind(latency.latency_run, procs, target, ingest_kind, view_kind, w, rate,
                        seconds), summary_field="p50_ms")


def _bind(func: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any
          ) -> Callable[[], dict[str, Any]]:
    return lambda: func(*args, **kwargs)


def _bucketly_single(procs: Processes, workload: str, durable: bool, events: int
                     ) -> dict[str, Any]:
    with bucketly_runners.server() as running:
        return run_driver(
            procs, "bucketly-send", workload=workload, mode="single", connections=1,
            durable=durable, events=events, **bucketly_runners.server_options(running))


def _redis_driver(procs: Processes, kind: str, workload: str, target: dict[str, Any],
                  **extra: Any) -> dict[str, Any]:
    return run_driver(procs, kind, workload=workload, **target, **extra)


@contextlib.contextmanager
def _bucketly_target() -> Iterator[dict[str, Any]]:
    with bucketly_runners.server() as running:
        yield bucketly_runners.server_options(running)


def _bare_target(procs: Processes) -> Callable[[], Any]:
    @contextlib.contextmanager
    def target() -> Iterator[dict[str, Any]]:
        proc, port = ceilings.start_bare_server(procs, "tuned")
        try:
            yield {"port": port, "connections": 1}
        finally:
            procs.stop(proc)

    return target


def _redis_target(redis: redis_peers.RedisTarget) -> Callable[[], Any]:
    @contextlib.contextmanager
    def target() -> Iterator[dict[str, Any]]:
        redis_peers.cleanup(redis)
        try:
            yield redis.options()
        finally:
            redis_peers.cleanup(redis)

    return target


# -- running -------------------------------------------------------------------------------


#: Extra rounds, after the planned ones, for measurements that have fewer good runs than asked
#: (a failed run is reported, and made up for so that every number stays a median of >= 3).
MAKE_UP_ROUNDS = 2


def run_rounds(measurements: list[Measurement], runs: int, label: str) -> None:
    for r in range(runs + MAKE_UP_ROUNDS):
        if r < runs:
            # Rotate the order each round so no system always runs right after the same one.
            order = measurements[r % len(measurements):] + measurements[: r % len(measurements)]
        else:
            order = [m for m in measurements if len(m.values(m.summary_field)) < runs]
        for m in order:
            started = time.perf_counter()
            try:
                sample = m.run()
            except Exception as exc:  # one broken run must not stop the suite: it is reported
                reason = one_line(exc)
                m.samples.append(None)
                m.errors.append(f"round {r + 1}: {reason}")
                status = f"FAILED: {reason}"
            else:
                m.samples.append(sample)
                status = _short(sample)
            took = time.perf_counter() - started
            what = f"{r + 1}/{runs}" if r < runs else "make-up"
            print(f"[{label} {what}] {m.key:<40} {status}  ({took:.1f} s)", flush=True)


def one_line(exc: BaseException) -> str:
    """The exception's first line, and its last one when it has more (e.g. a server's log)."""
    text = str(exc) if isinstance(exc, RunFailed) else (
        "".join(traceback.format_exception_only(exc)).strip())
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1:
        return f"{lines[0]} ... {lines[-1]}"
    return lines[0] if lines else type(exc).__name__


def _short(sample: dict[str, Any]) -> str:
    if "p50_ms" in sample:
        return (f"p50 {sample['p50_ms']:.2f} ms, p99 {sample['p99_ms']:.2f} ms "
                f"({sample['views']} views, ingest {sample['ingest_rate']:,.0f}/s)")
    text = f"{sample['rate']:,.0f} events/s"
    if "trials" in sample:
        text += " | " + ", ".join(f"{t['target_rate'] // 1000}k: {100 * t['loss']:.2f}%"
                                  for t in sample["trials"])
    return text


def ratio(m: Measurement, suite: Suite) -> float | None:
    if not m.reference or m.reference == m.key:
        return None
    return round_ratio(suite, m.key, m.reference)


# -- reporting -----------------------------------------------------------------------------


def fmt_rate(value: float) -> str:
    return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.1f}k"


def runs_text(values: list[float], total: int, fmt: Callable[[float], str] = fmt_rate) -> str:
    shown = ", ".join(fmt(v) for v in values)
    failed = total - len(values)
    return shown + (f" ({failed} failed)" if failed else "")


def throughput_rows(suite: Suite) -> list[list[str]]:
    rows = []
    for m in suite.throughput:
        values = m.values()
        r = ratio(m, suite)
        ref = "reference" if m.key == m.reference else ("" if r is None else f"{r:.2f}x")
        per_cpu = [s["events"] / s["server_cpu"] for s in m.samples
                   if s is not None and s.get("server_cpu")]
        if m.key == STATSD_KEY:
            headline = float(statsd_peer.zero_loss_rate([s for s in m.samples if s])[0])
        else:
            headline = median(values) if values else 0.0
        rows.append([m.system, m.how, m.distribution or "-",
                     fmt_rate(headline) if values else "failed",
                     runs_text(values, len(m.samples)), ref,
                     fmt_rate(median(per_cpu)) if per_cpu else ""])
    return rows


def statsd_rows(suite: Suite) -> list[list[str]]:
    m = suite.find(STATSD_KEY)
    if m is None:
        return []
    by_rate: dict[int, list[dict[str, Any]]] = {}
    for sample in m.samples:
        for t in (sample or {}).get("trials", []):
            by_rate.setdefault(t["target_rate"], []).append(t)
    rows = []
    for rate, trials in sorted(by_rate.items()):
        rows.append([
            fmt_rate(rate), fmt_rate(median([t["send_rate"] for t in trials])),
            f"{100 * median([t['loss'] for t in trials]):.2f}%",
            ", ".join(f"{100 * t['loss']:.2f}%" for t in trials),
            ", ".join(str(t["socket_drops"]) for t in trials),
        ])
    return rows


def latency_rows(suite: Suite) -> list[list[str]]:
    rows = []
    for m in suite.latency:
        ok = [s for s in m.samples if s is not None]
        if not ok:
            rows.append([m.system, m.how, "failed", "", "", ""])
            continue
        rows.append([
            m.system, m.how,
            f"{fmt_rate(median([s['target_rate'] for s in ok]))} / "
            f"{fmt_rate(median([s['ingest_rate'] for s in ok]))}",
            f"{median([s['p50_ms'] for s in ok]):.2f}",
            f"{median([s['p99_ms'] for s in ok]):.2f}",
            ", ".join(f"{s['p50_ms']:.2f}/{s['p99_ms']:.2f}" for s in ok)
            + (f" ({len(m.samples) - len(ok)} failed)" if len(ok) < len(m.samples) else ""),
        ])
    return rows


MEMORY_SOURCES = (
    ("bucketly/1conn/batched/memory/uniform", f"bucketly, {DEFAULT} (bucketlyd RSS growth)",
     "rss_delta"),
    ("bucketly/1conn/batched/memory/plain/uniform", f"bucketly, {PLAIN} (bucketlyd RSS growth)",
     "rss_delta"),
    ("bare/1conn/tuned/uniform", f"bare asyncio server, {DEFAULT} (RSS growth)", "rss_delta"),
    ("inprocess/decode/tuned/uniform", f"{DEFAULT} in-process: UniqueIndex (RSS growth)",
     "rss_delta"),
    ("inprocess/decode/tuned/plain/uniform",
     f"{PLAIN} in-process: Python dict of sets (RSS growth)", "rss_delta"),
    ("redis/pipelined/uniform", "Redis (INFO memory used_memory growth)", "memory_delta"),
)


def _per_pair(suite: Suite, key: str, field_name: str) -> list[float]:
    """Each run's memory growth (``field_name``) per unique pair held, for measurement ``key``."""
    m = suite.find(key)
    return [s[field_name] / s["unique_pairs"] for s in (m.samples if m else [])
            if s is not None and field_name in s and s.get("unique_pairs")]


def memory_rows(suite: Suite) -> list[list[str]]:
    rows = []
    for key, label, field_name in MEMORY_SOURCES:
        per_pair = _per_pair(suite, key, field_name)
        if not per_pair:
            continue
        mid = median(per_pair)
        rows.append([label, f"{mid:.1f}", f"{mid * 1e6 / 2**20:.1f}",
                     ", ".join(f"{v:.1f}" for v in per_pair)])
    return rows


def round_ratio(suite: Suite, key: str, other: str) -> float | None:
    """The median over rounds of ``key``'s rate divided by ``other``'s, run in the same round."""
    a, b = suite.find(key), suite.find(other)
    if a is None or b is None:
        return None
    pairs = [(x["rate"], y["rate"]) for x, y in zip(a.samples, b.samples, strict=False)
             if x is not None and y is not None and y["rate"]]
    return median([x / y for x, y in pairs]) if pairs else None


def _median_of(suite: Suite, key: str, field_name: str = "rate") -> float | None:
    m = suite.find(key)
    values = m.values(field_name) if m is not None else []
    return median(values) if values else None


def _memory_per_pair(suite: Suite, key: str, field_name: str) -> float | None:
    per_pair = _per_pair(suite, key, field_name)
    return median(per_pair) if per_pair else None


def target_rows(suite: Suite) -> list[list[str]]:
    """Issue 7's targets, each with what this run measured and whether it is met."""
    rows: list[list[str]] = []

    def add(target: str, value: float | None, text: str, met: bool | None) -> None:
        if value is not None:
            rows.append([target, text, "yes" if met else "**no**"])

    for dist in DISTRIBUTIONS:
        for conns in (1, 8):
            rate = _median_of(suite, f"bucketly/{conns}conn/batched/memory/{dist}")
            add(f"batched ingest, {conns} connection{'s' * (conns > 1)}, {dist}: "
                ">= 1,000,000 events/s", rate, fmt_rate(rate or 0), (rate or 0) >= 1e6)
        ref = f"bucketly/1conn/batched/memory/{dist}"
        r = round_ratio(suite, ref, f"redis/pipelined/{dist}")
        add(f"batched ingest, {dist}: >= 10x redis-py pipelined SADD", r, f"{r or 0:.1f}x",
            (r or 0) >= 10)
        r = round_ratio(suite, ref, f"bare/1conn/tuned/{dist}")
        add(f"batched ingest, {dist}: >= 70% of the bare asyncio server (same handler)", r,
            f"{100 * (r or 0):.0f}%", (r or 0) >= 0.7)
    statsd = suite.find(STATSD_KEY)
    rate = _median_of(suite, "bucketly/1conn/batched/memory/uniform")
    if statsd is not None and rate is not None:
        best = statsd_peer.zero_loss_rate([x for x in statsd.samples if x])[0]
        if best:
            add("batched ingest: >= 5x statsd's highest loss-free UDP rate", best,
                f"{rate / best:.1f}x", rate >= 5 * best)
    r = round_ratio(suite, "bucketly/1conn/single/memory/uniform", "redis/single/uniform")
    add("acknowledged single sends: >= redis-py's non-pipelined SADD", r, f"{r or 0:.2f}x",
        (r or 0) >= 1)
    lat = next((m for m in suite.latency
                if m.key == "latency/bucketly/1conn/batched/memory/uniform"), None)
    p99 = [x["p99_ms"] for x in lat.samples if x is not None] if lat is not None else []
    if p99:
        add("view p99 under load: <= 5 ms", median(p99), f"{median(p99):.2f} ms",
            median(p99) <= 5)
    ours = _memory_per_pair(suite, "bucketly/1conn/batched/memory/uniform", "rss_delta")
    redis = _memory_per_pair(suite, "redis/pipelined/uniform", "memory_delta")
    if ours is not None and redis:
        add("memory per unique pair: <= 1.5x Redis", ours, f"{ours / redis:.2f}x",
            ours <= 1.5 * redis)
    for conns in (1, 8):
        r = round_ratio(suite, f"bucketly/{conns}conn/batched/durable/uniform",
                        f"bucketly/{conns}conn/batched/memory/uniform")
        add(f"durable bucket, {conns} connection{'s' * (conns > 1)}: >= half the in-memory "
            "rate", r, f"{r or 0:.2f}x", (r or 0) >= 0.5)
    return rows


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


THROUGHPUT_HEADER = ["System", "How", "Workload", "events/s (median)", "runs", "vs reference",
                     "events per server CPU-second"]
STATSD_HEADER = ["target rate", "sent at", "loss (median)", "loss per run",
                 "socket drops per run (datagrams)"]
LATENCY_HEADER = ["System", "view / ingest", "ingest target / achieved (events/s)",
                  "p50 ms", "p99 ms", "runs (p50/p99)"]
MEMORY_HEADER = ["System", "bytes per unique pair", "MiB per million unique pairs",
                 "runs (bytes per pair)"]


def machine_info(suite: Suite) -> list[tuple[str, str]]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), "?")
    info = [
        ("cores (nproc)", str(os.cpu_count())),
        ("CPU", cpu),
        ("memory", _meminfo()),
        ("kernel", platform.release()),
        ("load average (1/5/15 min) at start, at end", suite.versions.pop("loadavg", "?")),
        ("Python", platform.python_version()),
        ("bucketly._speedups (native UniqueIndex)", "built" if _speedups() else "not built"),
    ]
    for dist in ("ormsgpack", "redis"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            name = "redis-py" if dist == "redis" else dist
            info.append((name, importlib.metadata.version(dist)))
    info += sorted(suite.versions.items())
    return info


def _meminfo() -> str:
    with contextlib.suppress(OSError, StopIteration, ValueError), open("/proc/meminfo") as f:
        kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
        return f"{kib / 2**20:.1f} GiB"
    return "?"


def render_markdown(suite: Suite, command: str, started: datetime.datetime,
                    seconds: float) -> str:
    args = suite.args
    ref_text = ("bucketly, 1 connection, batched, in-memory bucket, same workload"
                if suite.bucketly_missing is None else
                "redis-py pipelined SADD, same workload (bucketly was not measured)")
    parts = [
        "# Performance",
        "",
        f"Measured with `{command}` on {started:%Y-%m-%d %H:%M} UTC ({seconds / 60:.1f} min). "
        f"Every number is the median of {args.runs} runs, run interleaved in rounds so that a "
        "noisy spell on this shared machine hits every system alike; a ratio is the median of "
        "the per-round ratios against the reference measured in the same round "
        f"(reference: {ref_text}). Each run checks its final count against the ground truth; a "
        "run that miscounts is a failed run and gives no number. *Events per server "
        "CPU-second* divides the events by the CPU time the server process used during the "
        "timed section (`/proc/PID/stat`; Redis: `INFO cpu`; in-process: the process itself): "
        "less sensitive than events/s to other tenants of the machine taking the CPU away.",
        "",
        "## Machine",
        "",
        md_table(["", ""], [[k, v] for k, v in machine_info(suite)]),
        "",
        "## Workload",
        "",
        "The unique-clicks job: events `{\"url\": ..., \"user\": ...}`, counted as unique users "
        "per url. Frames are bucketly's: 4-byte length + MessagePack map of a 1,000-event "
        "`send` batch (~49 KB).",
        "",
        md_table(["distribution", "events", "urls", "users", "unique pairs"],
                 [[f"{v:,}" if isinstance(v, int) else str(v) for v in d.values()]
                  for d in suite.described.values()]),
        "",
        "## Throughput",
        "",
        md_table(THROUGHPUT_HEADER, throughput_rows(suite)),
        "",
    ]
    statsd = statsd_rows(suite)
    if statsd:
        m = suite.find(STATSD_KEY)
        assert m is not None
        best = statsd_peer.zero_loss_rate([s for s in m.samples if s])[0]
        trial_seconds = (statsd_peer.QUICK_TRIAL_SECONDS if args.quick
                         else statsd_peer.TRIAL_SECONDS)
        parts += [
            "## statsd: sets over UDP",
            "",
            f"Highest rate with zero loss: **{fmt_rate(best)} events/s**: the median loss over "
            "the sweeps is zero at that rate and every lower one (the highest rate before the "
            f"first loss, sweep by sweep: {runs_text(m.values(), len(m.samples))}). Each trial "
            f"is a fresh statsd sent {trial_seconds:g} s of events (at most the "
            "workload's); a sweep stops after two rates in a row lose more than "
            f"{statsd_peer.STOP_LOSS:.0%}. Loss is what statsd's own `metrics_received` counter "
            "is short of what was sent: statsd itself never says that it dropped anything; only "
            "the kernel's per-socket drop counter (`/proc/net/udp`, in datagrams) shows it. UDP "
            "receive buffer: the system default (net.core.rmem_default = "
            f"{_sysctl('net/core/rmem_default')} bytes).",
            "",
            md_table(STATSD_HEADER, statsd),
            "",
        ]
    lat = latency_rows(suite)
    if lat:
        parts += [
            "## View latency",
            "",
            "A view on its own connection, one at a time "
            f"({latency.VIEW_PAUSE * 1e3:.0f} ms apart), while one other connection ingests at "
            f"{latency.INGEST_SHARE:.0%} of the system's median maximum rate measured above.",
            "",
            md_table(LATENCY_HEADER, lat),
            "",
        ]
    mem = memory_rows(suite)
    if mem:
        parts += [
            "## Memory",
            "",
            "Growth of the server's memory while it took the uniform workload, divided by the "
            "unique (url, user) pairs it holds. Users are 11-character strings, urls 26.",
            "",
            md_table(MEMORY_HEADER, mem),
            "",
        ]
    targets = target_rows(suite)
    if targets:
        parts += [
            "## Targets",
            "",
            "Issue 7's targets, computed from the tables above. A ratio between two systems is "
            "the median of their per-round ratios.",
            "",
            md_table(["Target", "Measured", "Met"], targets),
            "",
        ]
    failures = [f"- `{m.key}`: {e}" for m in suite.throughput + suite.latency for e in m.errors]
    notes = [f"- {n}" for n in suite.notes]
    if failures or notes:
        parts += ["## Failed runs and notes", "", *failures, *notes, ""]
    parts += [
        "## What each row is",
        "",
        "- **bucketly**: the public `bucketly.Client` against a fresh `bucketlyd` "
        "(`bucketly.testing.run_server`, handlers `bench/handlers.py`) for each run; 8 "
        "connections are 8 clients in 8 threads of one process, each sending its share.",
        f"- **handlers**: `{DEFAULT}` keeps the pairs in a `bucketly.UniqueIndex` "
        f"(native core: {'built' if _speedups() else 'NOT built, pure-Python fallback'}), "
        f"as docs/handlers.md recommends; `{PLAIN}` is the same job in plain Python, a dict "
        "of sets with interned users. Rows that name no handler run "
        f"`{DEFAULT}`.",
        "- **in-process handler**: the same handler fed the same batches in one "
        "process, no network: the ceiling of the handler itself (`decode` adds ormsgpack "
        "decoding of each frame).",
        "- **bare asyncio server**: an `asyncio.Protocol` that decodes the same frames into the "
        "same handler and acknowledges each, nothing else (`bench/peers/bare_server.py`), fed "
        "pre-encoded frames: what any Python daemon could reach here. `tuned` GC is bucketlyd's "
        "(freeze at start-up, gen-0 threshold 50,000).",
        "- **Redis**: a private `redis-server --save \"\" --appendonly no` started by the suite, "
        "driven by redis-py as a Python user would, and by redis-benchmark for the server's own "
        "ceiling.",
        "- **statsd**: statsd from npm in a temporary folder, one fresh daemon per trial; "
        "a Python sender paces `clicks.<url>:<user>|s` lines packed into datagrams.",
        "",
    ]
    return "\n".join(parts)


def _speedups() -> bool:
    import bucketly

    return bucketly.speedups_available()


def _sysctl(name: str) -> str:
    try:
        return Path("/proc/sys", name).read_text().strip()
    except OSError:
        return "?"


def print_console(suite: Suite) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(md_table(THROUGHPUT_HEADER, throughput_rows(suite)))
        return
    console = Console(width=max(160, Console().width))
    for title, header, rows in (
        ("Throughput", THROUGHPUT_HEADER, throughput_rows(suite)),
        ("statsd over UDP", STATSD_HEADER, statsd_rows(suite)),
        ("View latency", LATENCY_HEADER, latency_rows(suite)),
        ("Memory", MEMORY_HEADER, memory_rows(suite)),
        ("Targets", ["Target", "Measured", "Met"], target_rows(suite)),
    ):
        if not rows:
            continue
        table = Table(title=title)
        for column in header:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        console.print(table)


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: {QUICK_EVENTS:,} events, uniform workload only, "
                        "shorter statsd sweep and latency test (about a minute)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each measurement (>= 3)")
    parser.add_argument("--events", type=int, default=None,
                        help=f"events per run (default {EVENTS:,}; {QUICK_EVENTS:,} with --quick)")
    parser.add_argument("--single-events", type=int, default=None,
                        help="events of the one-acknowledged-send-per-event runs "
                        f"(default {redis_peers.SINGLE_EVENTS:,}; a tenth with --quick)")
    parser.add_argument("--output", default=str(REPO / "docs" / "performance.md"),
                        help="where to write the Markdown report (default docs/performance.md)")
    parser.add_argument("--only", default="",
                        help="comma-separated substrings of measurement keys to run, e.g. "
                        "'redis,bare/1conn'")
    parser.add_argument("--redis-port", type=int, default=None,
                        help="use the Redis on 127.0.0.1:PORT (only keys under "
                        f"{redis_peers.KEY_PREFIX!r}) instead of starting a private one")
    parser.add_argument("--no-statsd", action="store_true", help="skip statsd")
    parser.add_argument("--no-latency", action="store_true", help="skip the view-latency test")
    args = parser.parse_args(argv)
    if args.runs < 3:
        parser.error("--runs must be at least 3: every number is a median of >= 3 runs")
    if args.events is None:
        args.events = QUICK_EVENTS if args.quick else EVENTS
    if args.single_events is None:
        args.single_events = redis_peers.SINGLE_EVENTS // (10 if args.quick else 1)
    return args


def _loadavg() -> list[str]:
    try:
        return Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        return ["?"]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python bench/run.py" + "".join(
        " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    # SIGTERM ends the suite like Ctrl-C does: through the finally blocks that stop everything.
    signal.signal(signal.SIGTERM, _interrupt)
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.perf_counter()
    loadavg = _loadavg()
    with Processes() as procs, tempfile.TemporaryDirectory(prefix="bucketly-bench-") as tmp:
        suite = Suite(args, procs, {})
        print(f"generating workloads ({args.events:,} events) ...", flush=True)
        for dist in ["uniform"] if args.quick else DISTRIBUTIONS:
            workload = Workload.generate(WorkloadSpec(dist, events=args.events))
            path = Path(tmp) / f"{dist}.workload"
            workload.save(path)
            suite.workloads[dist] = str(path)
            suite.described[dist] = describe(workload.spec, workload.truth)
        statsd_install = None
        try:
            suite.bucketly_missing = bucketly_runners.available()
            if suite.bucketly_missing is None:
                suite.versions["bucketly"] = bucketly_runners.version()
            else:
                suite.notes.append(f"bucketly not measured: {suite.bucketly_missing}")
            try:
                if args.redis_port:
                    suite.redis = redis_peers.RedisTarget("127.0.0.1", args.redis_port, False)
                else:
                    suite.redis = redis_peers.start_private_redis(procs)
                suite.versions["Redis"] = redis_peers.redis_version(suite.redis)
            except (RunFailed, OSError, ImportError) as exc:
                suite.notes.append(f"Redis not measured: {exc}")
            if not args.no_statsd:
                try:
                    print("installing statsd from npm ...", flush=True)
                    statsd_install = statsd_peer.install()
                    suite.statsd = statsd_install
                    suite.versions["statsd"] = statsd_install.version
                    suite.versions["node"] = statsd_install.node_version
                except (RunFailed, OSError, subprocess.SubprocessError) as exc:
                    suite.notes.append(f"statsd not measured: {exc}")
            plan_throughput(suite)
            run_rounds(suite.throughput, args.runs, "throughput")
            if not args.no_latency:
                plan_latency(suite)
                run_rounds(suite.latency, args.runs, "latency")
        finally:
            if statsd_install is not None:
                statsd_install.cleanup()
            if suite.redis is not None and not suite.redis.private:
                with contextlib.suppress(Exception):
                    redis_peers.cleanup(suite.redis)
    seconds = time.perf_counter() - t0
    suite.versions["loadavg"] = " ".join(loadavg) + "; " + " ".join(_loadavg())
    print_console(suite)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    # Sections other benchmarks write (bench/statsd.py) are kept as they are.
    kept = ""
    if output.exists():
        text = output.read_text()
        begin = text.find(KEPT_BEGIN)
        if begin >= 0:
            kept = "\n" + text[begin:]
    output.write_text(render_markdown(suite, command, started, seconds) + kept)
    print(f"wrote {output} ({seconds:.0f} s)")
    failed = sum(1 for m in suite.throughput + suite.latency for s in m.samples if s is None)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: every process the suite started has been stopped", file=sys.stderr)
        sys.exit(130)
