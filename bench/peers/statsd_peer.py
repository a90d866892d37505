"""statsd (the Node daemon, ``STATSD_VERSION`` from npm): sets over UDP at increasing rates.

The suite installs statsd into a temporary folder with npm and starts one fresh daemon per trial,
with a tiny backend (``COUNT_BACKEND``) that adds up what statsd itself says it received
(``statsd.metrics_received``) and the size of every set, and writes them to a file at each flush.
The flush interval is an hour, so the one flush that counts is the one statsd makes when it gets
SIGTERM: the counts cover exactly one trial and the backend costs nothing while it runs.

A trial sends ``rate * duration`` events (``key:user|s`` lines, packed into datagrams of at most
``PACKET_BYTES`` as statsd clients do), paced by a driver subprocess; then the suite waits for
statsd's socket queue to drain, stops it, and compares. Loss is ``1 - received / sent``; the
socket's own drop counter (``/proc/net/udp``) is reported beside it, because statsd itself never
says that it dropped anything. With zero loss the unique pairs in statsd's sets must equal the
truth of the events sent, or the trial fails.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import Processes, RunFailed, free_port, run_driver, wait_for_port
from bench.workload import Workload

STATSD_VERSION = "0.9.0"
#: Datagram payload limit: the statsd docs' advice for commodity networks (fits a 1500 MTU).
PACKET_BYTES = 1432
#: Rates tried, in events/s, in this order.
RATES = (25_000, 50_000, 75_000, 100_000, 125_000, 150_000, 200_000, 250_000, 300_000)
QUICK_RATES = (50_000, 150_000)
#: A sweep stops after two rates in a row lose more than this: higher rates only lose more.
STOP_LOSS = 0.05
TRIAL_SECONDS = 3.0
QUICK_TRIAL_SECONDS = 0.5
#: Longest wait for statsd to work through its socket queue after the sender stops.
DRAIN_TIMEOUT_SECONDS = 30.0

COUNT_BACKEND = r"""
// bench: add up what statsd says it received, write it at every flush (synchronously, so the
// flush statsd makes on SIGTERM is written before the process exits).
const fs = require('fs');
exports.init = function (startupTime, config, events) {
  const prefix = (config.prefixStats === undefined ? 'statsd' : config.prefixStats);
  const totals = { flushes: 0, metrics_received: 0, packets_received: 0, bad_lines: 0,
                   set_values: 0 };
  events.on('flush', function (timestamp, metrics) {
    totals.flushes += 1;
    totals.metrics_received += metrics.counters[prefix + '.metrics_received'] || 0;
    totals.packets_received += metrics.counters[prefix + '.packets_received'] || 0;
    totals.bad_lines += metrics.counters[prefix + '.bad_lines_seen'] || 0;
    for (const key in metrics.sets) totals.set_values += metrics.sets[key].size();
    fs.writeFileSync(config.benchCountFile, JSON.stringify(totals));
  });
  return true;
};
"""


@dataclass
class StatsdInstall:
    folder: Path
    version: str
    node_version: str
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    @property
    def script(self) -> Path:
        return self.folder / "node_modules" / "statsd" / "stats.js"

    def cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def install(version: str = STATSD_VERSION) -> StatsdInstall:
    """``npm install statsd@version`` into a new temporary folder (removed by ``cleanup``)."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise RunFailed(f"{tool} is not installed")
    tmp = tempfile.TemporaryDirectory(prefix="bucketly-bench-statsd-")
    folder = Path(tmp.name)
    try:
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--omit=optional", "--prefix",
             str(folder), f"statsd@{version}"],
            check=True, capture_output=True, text=True, timeout=300,
        )
        (folder / "count_backend.js").write_text(COUNT_BACKEND)
        package = json.loads((folder / "node_modules/statsd/package.json").read_text())
        node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True)
    except BaseException:
        tmp.cleanup()
        raise
    return StatsdInstall(folder, package["version"], node.stdout.strip(), tmp)


def _udp_socket_state(port: int) -> tuple[int, int] | None:
    """(rx_queue bytes, drops) of the UDP socket bound to 127.0.0.1:port, from /proc/net/udp."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            cols = line.split()
            if cols[1] == want:
                rx_queue = int(cols[4].split(":")[1], 16)
                return rx_queue, int(cols[-1])
    return None


def trial(procs: Processes, install: StatsdInstall, workload: str, rate: int,
          duration: float, max_events: int) -> dict[str, Any]:
    """Start statsd, send ``rate`` events/s for ``duration`` s, stop it, count what it got."""
    port, mgmt_port = free_port(socket.SOCK_DGRAM), free_port()
    counts = install.folder / f"counts-{port}.json"
    config = install.folder / f"config-{port}.js"
    config.write_text("module.exports = " + json.dumps({
        "port": port, "address": "127.0.0.1", "mgmt_port": mgmt_port,
        "mgmt_address": "127.0.0.1", "flushInterval": 3_600_000,
        "backends": [str(install.folder / "count_backend.js")],
        "benchCountFile": str(counts),
    }) + ";\n")
    proc = procs.start(["node", str(install.script), str(config)], cwd=install.folder,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(mgmt_port, proc)
        if _udp_socket_state(port) is None:
            raise RunFailed(f"statsd is not bound to udp port {port}")
        events = min(max_events, int(rate * duration))
        sent = run_driver(procs, "statsd-send", workload=workload, port=port, rate=rate,
                          events=events)
        deadline = time.monotonic() + DRAIN_TIMEOUT_SECONDS
        while True:
            state = _udp_socket_state(port)
            if state is None or state[0] == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        time.sleep(0.2)  # the last datagrams read are being parsed
        drops = state[1] if state else -1
    finally:
        procs.stop(proc)
    try:
        got = json.loads(counts.read_text())
    except FileNotFoundError:
        raise RunFailed("statsd wrote no counts on exit") from None
    finally:
        counts.unlink(missing_ok=True)
        config.unlink(missing_ok=True)
    received = int(got["metrics_received"])
    if received > sent["events"] or got["bad_lines"]:
        raise RunFailed(f"statsd counted {received} metrics ({got['bad_lines']} bad lines) for "
                        f"{sent['events']} sent")
    loss = 1 - received / sent["events"]
    if loss == 0:
        truth = Workload.load(workload).truth_for(sent["events"])
        if got["set_values"] != truth.unique_pairs:
            raise RunFailed(f"statsd sets hold {got['set_values']} values, expected "
                            f"{truth.unique_pairs}")
    return {"target_rate": rate, "send_rate": sent["rate"], "sent": sent["events"],
            "received": received, "loss": loss, "socket_drops": drops,
            "packets": sent["packets"]}


def sweep(procs: Processes, install: StatsdInstall, workload: str, rates: tuple[int, ...],
          duration: float, max_events: int) -> dict[str, Any]:
    """One sweep of increasing rates: the loss at each, and the highest rate before a loss."""
    trials = []
    best = 0
    lost_any = False
    heavy = 0
    for rate in rates:
        result = trial(procs, install, workload, rate, duration, max_events)
        trials.append(result)
        lost_any = lost_any or result["loss"] > 0
        if not lost_any:
            best = rate
        heavy = heavy + 1 if result["loss"] > STOP_LOSS else 0
        if heavy == 2:
            break
    return {"rate": best, "events": sum(t["sent"] for t in trials), "trials": trials}


def zero_loss_rate(sweeps: list[dict[str, Any]]) -> tuple[int, dict[int, list[float]]]:
    """The highest rate at which, and at every lower rate, the median loss over sweeps is 0.

    A median per rate, rather than the first loss of each sweep, so that one trial hit by a
    noisy neighbour does not decide the result. Also returns the losses by rate.
    """
    losses: dict[int, list[float]] = {}
    for result in sweeps:
        for t in result["trials"]:
            losses.setdefault(t["target_rate"], []).append(t["loss"])
    best = 0
    for rate in sorted(losses):
        values = sorted(losses[rate])
        if len(values) < 3 or values[len(values) // 2] > 0:
            break
        best = rate
    return best, losses


# -- driver --------------------------------------------------------------------------------


def metric_key(url: str) -> str:
    # statsd splits a line on ':' and strips most punctuation from keys: send a clean key.
    return "clicks." + re.sub(r"[^A-Za-z0-9]+", "_", url)


def packets_of(workload: Workload, events: int) -> tuple[list[bytes], list[int]]:
    """Lines ``key:user|s`` packed into datagrams of at most ``PACKET_BYTES``."""
    keys = {url: metric_key(url) for url in workload.url_names}
    packets: list[bytes] = []
    cumulative: list[int] = []
    lines: list[str] = []
    size = count = 0
    for url, user in workload.pairs(events):
        line = f"{keys[url]}:{user}|s"
        if size + len(line) + 1 > PACKET_BYTES and lines:
            packets.append("\n".join(lines).encode())
            cumulative.append(count)
            lines, size = [], 0
        lines.append(line)
        size += len(line) + 1
        count += 1
    if lines:
        packets.append("\n".join(lines).encode())
        cumulative.append(count)
    return packets, cumulative


def drive_send(opts: dict[str, Any]) -> dict[str, Any]:
    workload = Workload.load(opts["workload"])
    packets, cumulative = packets_of(workload, opts["events"])
    rate = float(opts["rate"])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", opts["port"]))
    send = sock.send
    n = len(packets)
    i = 0
    start = time.perf_counter()
    deadline = start + 2 * cumulative[-1] / rate + 5
    while i < n:
        now = time.perf_counter()
        if now > deadline:
            raise RunFailed("sender fell too far behind its rate")
        due = (now - start) * rate
        if cumulative[i] > due:
            time.sleep(min(0.0005, (cumulative[i] - due) / rate))
            continue
        while i < n and cumulative[i] <= due:
            send(packets[i])
            i += 1
    seconds = time.perf_counter() - start
    sock.close()
    return {"events": cumulative[-1], "packets": n, "seconds": seconds,
            "rate": cumulative[-1] / seconds}
