"""docs/grafana/bucketly.json, the Grafana dashboard, cannot drift from the metrics.

Every metric name its queries use is in the metrics table of docs/operations.md (or is one of the
process collector's metrics that page names), and every metric of that table has a panel.
tests/test_prometheus.py also runs each query against a real Prometheus scraping a real
bucketlyd, and checks that it answers with data.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docs" / "grafana" / "bucketly.json"
OPERATIONS = ROOT / "docs" / "operations.md"

#: What Grafana puts in a query before it sends it, and what a test sends in its place.
GRAFANA_VARIABLES = {"$__rate_interval": "10s", "$instance": ".*", "$bucket": ".*"}

_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
             "group_left", "group_right", "inf", "nan"}


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """``(panel title, expression)`` for every query of every panel."""
    found = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"]))
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not its functions, labels or keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings: label values, regexes
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([a-zA-Z_:][\w:]*)\b(\s*\()?", text):
        name, call = match.groups()
        if call is None and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def documented_metrics() -> tuple[set[str], set[str]]:
    """(the metrics table of docs/operations.md, the process collector metrics it names)."""
    text = OPERATIONS.read_text()
    table = set(re.findall(r"^\| `(bucketly_\w+)` \|", text, re.M))
    process = set(re.findall(r"`(process_\w+)`", text))
    assert table and process
    return table, process


def histograms() -> set[str]:
    """The histograms of docs/operations.md's table: a query names their ``_bucket``,
    ``_sum`` or ``_count`` series."""
    return set(re.findall(r"^\| `(bucketly_\w+)` \| histogram \|", OPERATIONS.read_text(),
                          re.M))


def metric_of(series: str, histogram_names: set[str]) -> str:
    """The metric a series belongs to: ``x`` for ``x_bucket`` of histogram ``x``."""
    for suffix in ("_bucket", "_sum", "_count"):
        if series.endswith(suffix) and series.removesuffix(suffix) in histogram_names:
            return series.removesuffix(suffix)
    return series


def test_metric_names_are_read_from_expressions() -> None:
    assert metric_names(
        'sum by (bucket) (rate(bucketly_a_total{instance=~"$instance", bucket=~"x|y"}[5m]))'
        " / on (bucket) group_left bucketly_b > 0 or vector(0)"
    ) == {"bucketly_a_total", "bucketly_b"}
    assert metric_names('time() - min(process_start_time_seconds{job="bucketly"})') == {
        "process_start_time_seconds"
    }


def test_every_metric_the_dashboard_uses_is_documented_and_every_one_is_shown() -> None:
    table, process = documented_metrics()
    names = histograms()
    assert names, "docs/operations.md's table has no histogram"
    used = {metric_of(name, names) for _, expr in queries(dashboard())
            for name in metric_names(expr)}
    assert used - table - process == set(), "the dashboard uses metrics docs/operations.md lacks"
    assert table - used == set(), "metrics with no panel in docs/grafana/bucketly.json"


def test_the_dashboard_is_one_grafana_can_import() -> None:
    board = dashboard()
    assert board["schemaVersion"] == 39
    assert board["uid"] == "bucketly"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    source = {"type": "prometheus", "uid": "${datasource}"}
    for name in ("instance", "bucket"):
        assert variables[name]["datasource"] == source
    panels = board["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels), "panel ids must be unique"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == source, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == source, panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
    # Every variable a query uses is one Grafana defines, and one the Prometheus test replaces.
    for title, expr in queries(board):
        rest = expr
        for variable in GRAFANA_VARIABLES:
            rest = rest.replace(variable, "")
        assert "$" not in rest, f"{title}: {expr}"
    titles = [panel["title"] for panel in panels]
    for wanted in ("Events applied per bucket /s", "Events refused by reason /s",
                   "View latency p99 per bucket", "Commit (fsync) time p50 / p99",
                   "Event loop lag p99", "Bytes in and out /s", "Requests waiting",
                   "Handler errors per bucket /s", "Seconds since last success",
                   "Job runs and failures", "Mean commit (fsync) time", "Client connections",
                   "CPU", "Resident memory"):
        assert wanted in titles
