"""A real Prometheus server against a real bucketlyd: the alert rules, and the metrics as they
arrive in Prometheus (not only as ``/metrics`` prints them).

- ``promtool check rules`` passes on docs/prometheus/bucketly-alerts.yml and fails on broken
  copies of it (so the check can fail), and ``promtool test rules`` runs the rules' unit tests
  (tests/prometheus/bucketly-alerts_test.yml);
- a ``prometheus`` process with its own configuration, data directory and free port scrapes a
  ``bucketlyd --metrics-address`` every second, with the alert rules loaded: the events a client
  sent arrive as exactly that count, the rules load, an alert goes pending on real series;
- every query of the Grafana dashboard (docs/grafana/bucketly.json) answers there with data;
- docs/operations.md shows the rules file as it is.

The binaries come from Debian's ``prometheus`` package (``.ci/run`` installs it). Without them
these tests skip, unless ``CI`` or ``BUCKETLY_REQUIRE_PEERS`` is set: then they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import bucketly
from bucketly.testing import RunningServer, run_server

from .conftest import TEST_HANDLERS, RawConnection
from .test_docs import _generated, _replace_generated
from .test_grafana import GRAFANA_VARIABLES, dashboard, queries
from .test_metrics import _free_port

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "docs" / "prometheus" / "bucketly-alerts.yml"
RULES_TESTS = Path(__file__).parent / "prometheus" / "bucketly-alerts_test.yml"
OPERATIONS = ROOT / "docs" / "operations.md"

#: Seconds to wait for Prometheus to start, or for what it scrapes to show what we expect. A
#: scrape a second and a rule evaluation a second: a few seconds are plenty, 60 is for a loaded
#: CI machine.
DEADLINE = 60.0


def _require(tool: str) -> str:
    """The path of ``tool``; skip without it, or fail where CI or BUCKETLY_REQUIRE_PEERS say so."""
    path = shutil.which(tool)
    if path is not None:
        return path
    why = f"needs {tool} (Debian's prometheus package: apt-get install prometheus)"
    if os.environ.get("CI") or os.environ.get("BUCKETLY_REQUIRE_PEERS"):
        pytest.fail(f"{why}; CI or BUCKETLY_REQUIRE_PEERS is set, so a missing {tool} fails")
    pytest.skip(why)


@pytest.fixture(scope="module")
def promtool() -> str:
    return _require("promtool")


def _promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)


# -- the rules file ---------------------------------------------------------------------------


def test_the_alert_rules_pass_promtool_check_rules(promtool: str) -> None:
    checked = _promtool(promtool, "check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 8 rules found" in checked.stdout


#: Ways to break a copy of the rules file (old text -> new text), each of which promtool rejects.
BREAKAGES = {
    "bad PromQL": ("expr: bucketly_job_seconds_since_success > 600",
                   "expr: bucketly_job_seconds_since_success > > 600"),
    "unknown function": ("increase(bucketly_bucket_handler_errors_total[5m])",
                         "increased(bucketly_bucket_handler_errors_total[5m])"),
    "bad template": ("{{ $labels.bucket }} takes no requests",
                     "{{ $labels.bucket takes no requests"),
    "bad duration": ("for: 10m", "for: ten minutes"),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_promtool_rejects_a_broken_copy_of_the_rules(
    promtool: str, tmp_path: Path, breakage: str
) -> None:
    old, new = BREAKAGES[breakage]
    text = RULES.read_text()
    assert text.count(old) == 1, f"{old!r} is no longer in the rules file: update BREAKAGES"
    broken = tmp_path / "broken.yml"
    broken.write_text(text.replace(old, new))
    checked = _promtool(promtool, "check", "rules", str(broken))
    assert checked.returncode != 0, checked.stdout
    assert "FAILED" in checked.stdout + checked.stderr


def test_the_alert_rules_fire_as_their_unit_tests_say(promtool: str) -> None:
    tested = _promtool(promtool, "test", "rules", str(RULES_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_docs_operations_md_shows_the_rules_file_as_it_is() -> None:
    shown = _generated(OPERATIONS.read_text(), "alert-rules")
    assert shown == f"```yaml\n{RULES.read_text()}```\n", (
        "docs/operations.md does not show docs/prometheus/bucketly-alerts.yml as it is: "
        "run python -m tests.test_prometheus --update"
    )


# -- a real Prometheus scraping a real bucketlyd ----------------------------------------------


@dataclass
class Prometheus:
    """A prometheus process of the test's own, and its HTTP API."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``: its ``data``, once the status is success."""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector ``promql`` is now: [{"metric": {...}, "value": [t, "v"]}...]."""
        data = self.api("query", query=promql)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def wait_for(self, what: str, check: Callable[[], Any]) -> Any:
        """Call ``check`` until it returns something true (a scrape a second); return that."""
        deadline = time.monotonic() + DEADLINE
        while True:
            result = check()
            if result:
                return result
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.logs()}")
            if time.monotonic() > deadline:
                targets = self.api("targets")["activeTargets"]
                raise AssertionError(f"{what}: not within {DEADLINE} s; targets: {targets}")
            time.sleep(0.1)

    def logs(self) -> str:
        return self.log.read_text()[-3000:]


@dataclass
class Stack:
    bucketlyd: RunningServer
    metrics_port: int
    prometheus: Prometheus

    def client(self) -> bucketly.Client:
        return bucketly.Client(self.bucketlyd.host, self.bucketlyd.port, user="admin",
                               password="admin")


def _start_prometheus(binary: str, directory: Path, target: str) -> Prometheus:
    # JSON is YAML: no YAML library needed to write the configuration.
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "bucketly", "static_configs": [{"targets": [target]}]},
        ],
    }
    config_file = directory / "prometheus.yml"
    config_file.write_text(json.dumps(config, indent=2))
    port = _free_port()
    log = directory / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, f"--config.file={config_file}", f"--storage.tsdb.path={directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=directory,
        )
    prometheus = Prometheus(process, port, log)
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=5) as ready:
                if ready.status == 200:
                    return prometheus
        except OSError:
            pass  # not listening yet, or 503 while it starts
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(process)
            raise AssertionError(f"prometheus did not become ready: {prometheus.logs()}")
        time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """bucketlyd with --metrics-address, scraped every second by a Prometheus of its own.

    Every metric has a series from the start: a durable bucket, a bucket with a job, a refused
    send, a rejected frame and a connection closed for a limit are made here.
    """
    binary = _require("prometheus")
    directory = tmp_path_factory.mktemp("prometheus")
    metrics_port = _free_port()
    # The test handlers and StatsdMetrics, so that the statsd listener has its metrics too.
    handlers = directory / "handlers.py"
    handlers.write_text(TEST_HANDLERS.read_text() + "\nfrom bucketly.statsd import StatsdMetrics\n")
    with run_server(handlers=handlers, database=directory / "db.dat",
                    extra_args=["--metrics-address", f"127.0.0.1:{metrics_port}",
                                "--statsd", "127.0.0.1:0"]) as server:
        with bucketly.Client(server.host, server.port, user="admin", password="admin") as client:
            client.create_bucket("durable", "Recorder", durable=True)
            client.send("durable", "kept")
            client.create_bucket("scheduled", "Publisher", config={"interval": 0.2})
            client.flush()
        raw = RawConnection(server.host, server.port)
        raw.send_bytes(b"\x00\x00\x00\x01\xc1")  # a frame that is not MessagePack
        assert raw.read().code == "bad_frame"
        for i in range(17):  # past the pre-auth frame budget: closed for pre_auth_frames
            raw.request(i, "ping")
        raw.assert_closed()
        raw.close()
        prometheus = _start_prometheus(binary, directory, f"127.0.0.1:{metrics_port}")
        try:
            yield Stack(server, metrics_port, prometheus)
        finally:
            _stop(prometheus.process)


def _value(sample: dict[str, Any]) -> float:
    return float(sample["value"][1])


def test_prometheus_gets_exactly_the_events_sent(stack: Stack) -> None:
    sent = 12_345
    with stack.client() as client:
        client.create_bucket("clicks", "Recorder")
        for i in range(sent):
            client.send("clicks", {"url": f"/{i % 7}", "user": i})
        client.flush()
        assert client.view("clicks", "count") == sent

    def arrived() -> bool:
        samples = stack.prometheus.query('bucketly_bucket_events_applied_total{bucket="clicks"}')
        return bool(samples) and _value(samples[0]) == sent

    stack.prometheus.wait_for(f"bucketly_bucket_events_applied_total == {sent}", arrived)
    (sample,) = stack.prometheus.query('bucketly_bucket_events_applied_total{bucket="clicks"}')
    assert sample["metric"] == {
        "__name__": "bucketly_bucket_events_applied_total", "bucket": "clicks",
        "instance": f"127.0.0.1:{stack.metrics_port}", "job": "bucketly",
    }
    assert _value(stack.prometheus.query('up{job="bucketly"}')[0]) == 1


def test_a_scheduled_job_keeps_its_name_in_prometheus(stack: Stack) -> None:
    # ``job`` is the label Prometheus gives every target: a metric's own ``job`` label would be
    # renamed exported_job and the scrape job's name shown instead.
    runs = stack.prometheus.wait_for("the job's runs", lambda: stack.prometheus.query(
        'bucketly_job_runs_total{bucket="scheduled"} > 0'
    ))
    assert [sample["metric"]["job_name"] for sample in runs] == ["publish"]
    assert runs[0]["metric"]["job"] == "bucketly"


def test_the_alert_rules_load_into_prometheus(stack: Stack) -> None:
    (group,) = stack.prometheus.api("rules")["groups"]
    assert group["name"] == "bucketly"
    assert group["file"] == str(RULES)
    assert [rule["name"] for rule in group["rules"]] == [
        "BucketlyDown", "BucketlyJobStuck", "BucketlyJobFailing", "BucketlyHandlerErrors",
        "BucketlyBucketUnavailable", "BucketlyEventsRefused", "BucketlyDurableCommitsFailing",
        "BucketlyDurableCommitsSlow",
    ]
    evaluated = stack.prometheus.wait_for("every rule evaluated", lambda: all(
        rule["health"] == "ok" and rule["lastEvaluation"] > "1970"
        for rule in stack.prometheus.api("rules")["groups"][0]["rules"]
    ))
    assert evaluated


def test_events_refused_for_the_first_time_raise_the_alert(stack: Stack) -> None:
    """The first refusals with a reason count: the series is there, at 0, before them."""
    def alerts() -> list[dict[str, Any]]:
        return [alert for alert in stack.prometheus.api("alerts")["alerts"]
                if alert["labels"]["alertname"] == "BucketlyEventsRefused"]

    assert alerts() == []
    stack.prometheus.wait_for("a scrape with no refusal", lambda: stack.prometheus.query(
        'bucketly_events_refused_total{reason="unknown_bucket"} == 0'
    ))
    with stack.client() as client:
        client.send_many("nowhere", [1, 2, 3])
        with pytest.raises(bucketly.UnknownBucket):
            client.flush()
    (alert,) = stack.prometheus.wait_for("BucketlyEventsRefused pending", alerts)
    assert alert["state"] == "pending"  # for: 5m
    assert alert["labels"]["reason"] == "unknown_bucket"
    assert float(alert["value"]) > 0


def _poke(stack: Stack) -> None:
    """One of each thing the dashboard's rates show: so they have something to show."""
    with stack.client() as client:  # a login
        client.send("durable", "more")  # a durable commit
        client.view("durable", "count")  # a view call
        client.send_many("nowhere", [1])
        with pytest.raises(bucketly.UnknownBucket):
            client.flush()  # a refused event
    raw = RawConnection(stack.bucketlyd.host, stack.bucketlyd.port)
    raw.send_bytes(b"\x00\x00\x00\x01\xc1")  # a rejected frame
    for i in range(17):  # a connection closed for a limit
        raw.request(i, "ping")
    raw.assert_closed()
    raw.close()


def test_every_dashboard_query_answers_with_data(stack: Stack) -> None:
    """The queries of docs/grafana/bucketly.json, as Grafana sends them, in a real Prometheus."""
    for title, expr in queries(dashboard()):
        promql = expr
        for variable, value in GRAFANA_VARIABLES.items():
            promql = promql.replace(variable, value)

        def answers(promql: str = promql) -> list[dict[str, Any]]:
            samples = stack.prometheus.query(promql)
            if not samples:
                _poke(stack)
            return samples

        stack.prometheus.wait_for(f"panel {title!r}: {promql}", answers)


# -- python -m tests.test_prometheus --update ---------------------------------------------------


def update() -> None:
    """Write the rules file into docs/operations.md."""
    text = OPERATIONS.read_text()
    OPERATIONS.write_text(
        _replace_generated(text, "alert-rules", f"```yaml\n{RULES.read_text()}```\n")
    )


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python -m tests.test_prometheus --update")
    update()
