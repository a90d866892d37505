"""bucketlyd's command line: help, options, environment variables, start-up failures."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bucketly.server.config import options
from bucketly.testing import run_server

from .conftest import EXAMPLE_HANDLERS

BUCKETLYD = [sys.executable, "-m", "bucketly.cli.daemon"]


def _run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BUCKETLYD, *args], capture_output=True, text=True, timeout=60, env=env, cwd=cwd
    )


def test_help_explains_every_option() -> None:
    result = _run("--help")
    assert result.returncode == 0
    assert "Usage: bucketlyd [OPTIONS] [DATABASE]" in result.stdout
    for field in options():
        if not field.metadata.get("positional"):
            assert "--" + field.name.replace("_", "-") in result.stdout, field.name
            assert "BUCKETLYD_" + field.name.upper() in result.stdout, field.name
    assert "--bucket_handlers" in result.stdout


def test_the_readme_command_line_works(tmp_path: Path) -> None:
    """The exact usage line of the README, with a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with run_server(
        database=tmp_path / "bucketly_database.dat",
        handlers=None,
        extra_args=[
            "--bucket_handlers",
            str(EXAMPLE_HANDLERS),
            "--hostname",
            "127.0.0.1",
            "--port",
            str(port),
        ],
    ) as server:
        assert server.port == port
        with server.client() as client:
            assert [h["name"] for h in client.handlers()] == ["EventCounter", "UniqueClicks"]
    assert (tmp_path / "bucketly_database.dat").exists()


def test_options_work_as_environment_variables(tmp_path: Path) -> None:
    env = dict(
        os.environ, BUCKETLYD_BUCKET_HANDLERS=str(EXAMPLE_HANDLERS), BUCKETLYD_LOG_LEVEL="debug"
    )
    with run_server(database=tmp_path / "db.dat", env=env) as server:
        server.wait_for_log("DEBUG")  # the level came from the environment
        with server.client() as client:
            assert "UniqueClicks" in [h["name"] for h in client.handlers()]


def test_default_handlers_and_database_in_the_working_directory(tmp_path: Path) -> None:
    """With no argument at all, bucketlyd uses ./bucketly_database.dat and built-in handlers."""
    from bucketly.testing import RunningServer

    server = RunningServer([*BUCKETLYD, "--port", "0"], cwd=tmp_path)
    try:
        server.wait_ready()
        assert (tmp_path / "bucketly_database.dat").exists()
        with server.client() as client:
            assert {h["name"] for h in client.handlers()} == {"Count", "StatsdMetrics",
                                                             "UniqueCount"}
            client.create_bucket("c", "UniqueCount", config={"key": "url", "value": "user"})
            client.send_many("c", [{"url": "/", "user": u} for u in "abcab"])
            assert client.view("c", "count", key="/") == 3
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "import bucketly\nclass H(bucketly.Handler):\n    def on_event(self, e)\n",
            r"SyntaxError.*broken\.py, line 3",
        ),
        (
            "import bucketly\nx = 1\nraise RuntimeError('nope')\n",
            r"RuntimeError: nope \(.*broken\.py, line 3\)",
        ),
        ("import no_such_module_here\n", r"No module named 'no_such_module_here'.*line 1"),
        ("x = 1\n", r"defines no bucketly\.Handler subclass"),
        (
            "import bucketly\nclass H(bucketly.Handler):\n    pass\n",
            r"handler H defines neither on_event nor on_events",
        ),
    ],
)
def test_a_broken_handlers_file_stops_the_start_clearly(
    tmp_path: Path, source: str, expected: str
) -> None:
    handlers = tmp_path / "broken.py"
    handlers.write_text(source)
    result = _run(str(tmp_path / "db.dat"), "--bucket_handlers", str(handlers), "--port", "0")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    import re

    assert re.search(expected, result.stderr), result.stderr


def test_a_missing_handlers_file(tmp_path: Path) -> None:
    result = _run(str(tmp_path / "db.dat"), "--bucket_handlers", "nope.py", "--port", "0")
    assert result.returncode == 2
    assert "handlers file 'nope.py' does not exist" in result.stderr


def test_a_port_in_use_fails_before_touching_the_database(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = _run(str(tmp_path / "db.dat"), "--port", str(port))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert not (tmp_path / "db.dat").exists()


def test_a_database_file_that_is_not_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "db.dat"
    db.write_bytes(b"this is not a database" * 100)
    result = _run(str(db), "--port", "0")
    assert result.returncode == 5
    assert "cannot open database file" in result.stderr
    assert "Traceback" not in result.stderr
