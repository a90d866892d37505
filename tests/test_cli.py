"""The ``bucketly`` command-line client, driven against a real bucketlyd.

Most tests run the CLI in-process (``bucketly.cli.app.run``, with stdin/stdout/stderr
replaced), which is fast; a few run the real console entry point in a subprocess, to check what
a shell script sees: real pipes, real exit statuses. The interactive shell and everything that
needs a terminal is in test_cli_shell.py.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import bucketly
from bucketly.cli.app import run
from bucketly.cli.output import to_json
from bucketly.testing import RunningServer, run_server

from .conftest import EXAMPLE_HANDLERS

#: Environment variables the CLI reads; cleared so that the developer's own settings don't leak
#: into the tests.
_CLI_ENV = ("BUCKETLY_HOST", "BUCKETLY_PORT", "BUCKETLY_USER", "BUCKETLY_PASSWORD",
            "BUCKETLY_TOKEN", "BUCKETLY_PROFILE", "BUCKETLY_CONFIG", "BUCKETLY_TLS",
            "BUCKETLY_TLS_CA", "BUCKETLY_TLS_CERT", "BUCKETLY_TLS_KEY", "BUCKETLY_TIMEOUT",
            "BUCKETLY_HISTORY")


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture(scope="module")
def daemon() -> Iterator[RunningServer]:
    """One bucketlyd for the module (on the README's example handlers): tests use their own
    bucket names, so they don't see each other."""
    with run_server(handlers=EXAMPLE_HANDLERS) as server:
        yield server


@pytest.fixture
def env(daemon: RunningServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """BUCKETLY_* pointing at the daemon as admin/admin, and no config file."""
    for name in _CLI_ENV:
        monkeypatch.delenv(name, raising=False)
    values = {
        "BUCKETLY_HOST": daemon.host,
        "BUCKETLY_PORT": str(daemon.port),
        "BUCKETLY_USER": "admin",
        "BUCKETLY_PASSWORD": "admin",
        "BUCKETLY_CONFIG": str(tmp_path / "no-config.toml"),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def bucketly_cli(*args: str, input: str | bytes = b"") -> Result:
    """Run one ``bucketly`` command line in-process; stdout is not a terminal (so: JSON)."""
    data = input.encode() if isinstance(input, str) else input
    stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin
    sys.stdin = stdin
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = run(list(args))
    finally:
        sys.stdin = saved
    return Result(code, out.getvalue(), err.getvalue())


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.err.startswith("bucketly: error: "), result.err
    assert result.err.count("\n") == 1, result.err
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in result.err


def subprocess_cli(*args: str, input: bytes | None = None, env: dict[str, str] | None = None,
                   ) -> subprocess.CompletedProcess[bytes]:
    """The real console entry point, with pipes for stdin/stdout/stderr."""
    full_env = {k: v for k, v in os.environ.items() if k not in _CLI_ENV}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "bucketly.cli", *args], input=input,
        capture_output=True, env=full_env, timeout=60, check=False,
    )


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the basics ----------------------------------------------------------------------------------


def test_ping_prints_json_when_piped(env: dict[str, str]) -> None:
    result = bucketly_cli("ping")
    assert result.code == 0, result.err
    assert result.json()["reply"] == "pong"
    assert result.err == ""


def test_bucket_lifecycle(env: dict[str, str]) -> None:
    created = bucketly_cli("bucket", "create", "life", "UniqueClicks")
    assert created.code == 0, created.err
    assert created.json()["handler"] == "UniqueClicks"

    again = bucketly_cli("bucket", "create", "life", "UniqueClicks")
    assert again.code == 2
    assert_one_line_error(again, "exists already")

    listed = bucketly_cli("bucket", "list")
    assert "life" in [b["name"] for b in listed.json()]
    info = bucketly_cli("bucket", "info", "life").json()
    assert info["name"] == "life" and info["events"] == 0

    refused = bucketly_cli("bucket", "delete", "life")
    assert refused.code == 2
    assert_one_line_error(refused, "--yes")
    deleted = bucketly_cli("bucket", "delete", "life", "--yes")
    assert deleted.code == 0, deleted.err
    assert deleted.json() == {"bucket": "life", "deleted": True}

    gone = bucketly_cli("bucket", "info", "life")
    assert gone.code == 2
    assert_one_line_error(gone, "life", "bucketly bucket list")


def test_bucket_create_with_config_and_durable(env: dict[str, str]) -> None:
    result = bucketly_cli("bucket", "create", "cfg", "EventCounter", "--config", '{"a": [1]}',
                          "--durable")
    assert result.code == 0, result.err
    assert result.json()["config"] == {"a": [1]}
    assert result.json()["durable"] is True
    bad = bucketly_cli("bucket", "create", "cfg2", "EventCounter", "--config", "[1]")
    assert bad.code == 2
    assert_one_line_error(bad, "JSON object")
    unknown = bucketly_cli("bucket", "create", "cfg3", "NoSuchHandler")
    assert unknown.code == 2
    assert_one_line_error(unknown, "NoSuchHandler")


def test_bucket_configure(env: dict[str, str]) -> None:
    bucketly_cli("bucket", "create", "configured", "EventCounter")
    assert bucketly_cli("bucket", "configure", "configured", "--durable").json()["durable"]
    assert bucketly_cli("bucket", "info", "configured").json()["durable"] is True
    assert not bucketly_cli("bucket", "configure", "configured",
                            "--not-durable").json()["durable"]
    assert bucketly_cli("bucket", "info", "configured").json()["durable"] is False
    assert bucketly_cli("bucket", "configure", "configured").code == 2


def test_bucket_persistence_levels_and_the_snapshot_age(env: dict[str, str]) -> None:
    made = bucketly_cli("bucket", "create", "levels", "EventCounter", "--persistence",
                        "snapshot", "--snapshot-interval", "3600")
    assert made.code == 0, made.err
    assert made.json()["persistence"] == "snapshot"
    assert "none yet" in bucketly_cli("bucket", "info", "levels", "--table").out
    # Leaving durable for the snapshot level snapshots the state at once: its age shows.
    moved = bucketly_cli("bucket", "configure", "levels", "--persistence", "durable")
    assert moved.json()["persistence"] == "durable"
    bucketly_cli("bucket", "configure", "levels", "--persistence", "snapshot")
    info = bucketly_cli("bucket", "info", "levels").json()
    assert info["persistence"] == "snapshot"
    assert info["snapshots"]["interval_seconds"] == 3600
    assert info["snapshots"]["age_seconds"] is not None
    shown = bucketly_cli("bucket", "info", "levels", "--table").out
    assert re.search(r"last snapshot\s+[\d.]+ \w+ ago \(8 bytes, every 1h00m\)", shown), shown
    bad = bucketly_cli("bucket", "configure", "levels", "--snapshot-interval", "0.5")
    assert bad.code == 2


def test_handlers_and_whoami(env: dict[str, str]) -> None:
    handlers = {h["name"]: h for h in bucketly_cli("handlers").json()}
    assert handlers["UniqueClicks"]["views"] == ["count", "top"]
    me = bucketly_cli("whoami").json()
    assert me["user"] == "admin"
    assert {"permission": "*", "pattern": "*"} in me["permissions"]
    assert bucketly_cli("permissions").json() == me["permissions"]


# -- send, view, dump ----------------------------------------------------------------------------


def test_send_one_event_then_view(env: dict[str, str]) -> None:
    bucketly_cli("bucket", "create", "one", "UniqueClicks")
    sent = bucketly_cli("send", "one", '{"url": "/a", "user": "u1"}')
    assert sent.code == 0, sent.err
    assert sent.json() == {"bucket": "one", "sent": 1}
    # KEY=VALUE: valid JSON is JSON (n=5 a number), anything else a string (url=/a).
    assert bucketly_cli("view", "one", "count", "url=/a").json() == 1
    assert bucketly_cli("view", "one", "count", 'url="/a"').json() == 1
    assert bucketly_cli("view", "one", "top", "n=5").json() == [["/a", 1]]


def test_send_many_from_stdin_in_batches(env: dict[str, str], daemon: RunningServer) -> None:
    bucketly_cli("bucket", "create", "bulk", "EventCounter")
    lines = [json.dumps({"i": i}) for i in range(5000)]
    lines.insert(10, "")  # blank lines are skipped
    result = bucketly_cli("send", "bulk", "--batch-size", "700", input="\n".join(lines) + "\n")
    assert result.code == 0, result.err
    assert result.json() == {"bucket": "bulk", "sent": 5000}
    with daemon.client() as client:
        assert client.view("bulk", "total") == 5000


def test_send_from_file(env: dict[str, str], tmp_path: Path) -> None:
    bucketly_cli("bucket", "create", "fromfile", "EventCounter")
    path = tmp_path / "events.jsonl"
    path.write_text("".join(f"{i}\n" for i in range(300)))
    result = bucketly_cli("send", "fromfile", "--file", str(path))
    assert result.code == 0, result.err
    assert bucketly_cli("view", "fromfile", "total").json() == 300
    both = bucketly_cli("send", "fromfile", "1", "--file", str(path))
    assert both.code == 2
    missing = bucketly_cli("send", "fromfile", "--file", str(tmp_path / "nope.jsonl"))
    assert missing.code == 2
    assert_one_line_error(missing, "nope.jsonl")


def test_send_stops_at_a_line_that_is_not_json(env: dict[str, str]) -> None:
    bucketly_cli("bucket", "create", "badline", "EventCounter")
    result = bucketly_cli("send", "badline", input='1\n2\n{"oops"\n4\n')
    assert result.code == 2
    assert_one_line_error(result, "line 3 of standard input", "the 2 events before it were sent")
    assert bucketly_cli("view", "badline", "total").json() == 2


def test_bad_event_argument_is_a_usage_error(env: dict[str, str]) -> None:
    result = bucketly_cli("send", "anything", "{not json")
    assert result.code == 2
    assert_one_line_error(result, "EVENT is not valid JSON")


def test_bad_view_argument(env: dict[str, str]) -> None:
    bucketly_cli("bucket", "create", "viewargs", "UniqueClicks")
    result = bucketly_cli("view", "viewargs", "top", "five")
    assert result.code == 2
    assert "KEY=VALUE" in result.err
    unknown_view = bucketly_cli("view", "viewargs", "nope")
    assert unknown_view.code == 2
    assert_one_line_error(unknown_view, "nope", "bucketly handlers")


def test_dump_to_stdout_and_to_file(env: dict[str, str], daemon: RunningServer,
                                    tmp_path: Path) -> None:
    bucketly_cli("bucket", "create", "dumped", "UniqueClicks")
    events = "".join(json.dumps({"url": f"/{i % 300}", "user": f"u{i}"}) + "\n"
                     for i in range(1000))
    assert bucketly_cli("send", "dumped", input=events).code == 0
    with daemon.client() as client:
        expected = client.dump("dumped")
    assert bucketly_cli("dump", "dumped").json() == expected

    path = tmp_path / "out" / "dump.json"
    path.parent.mkdir()
    result = bucketly_cli("dump", "dumped", "-o", str(path))
    assert result.code == 0, result.err
    assert json.loads(path.read_text()) == expected
    summary = result.json()
    assert summary["entries"] == 300
    assert summary["bytes"] == path.stat().st_size
    assert [p.name for p in path.parent.iterdir()] == ["dump.json"]  # no temporary left
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_table_output_when_asked(env: dict[str, str]) -> None:
    bucketly_cli("bucket", "create", "tabled", "UniqueClicks")
    result = bucketly_cli("bucket", "list", "--table")
    assert result.code == 0
    assert "handler" in result.out and "tabled" in result.out
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.out)
    for args in (["handlers"], ["whoami"], ["stats"], ["bucket", "info", "tabled"],
                 ["view", "tabled", "top"], ["ping"], ["dump", "tabled"]):
        shown = bucketly_cli(*args, "--table")
        assert shown.code == 0, (args, shown.err)
        assert shown.out.strip(), args


# -- stats ---------------------------------------------------------------------------------------


def test_stats(env: dict[str, str]) -> None:
    bucketly_cli("bucket", "create", "counted", "EventCounter")
    bucketly_cli("send", "counted", input="1\n2\n3\n")
    stats = bucketly_cli("stats").json()
    assert stats["buckets"]["counted"]["events"] == 3
    assert stats["connections"] >= 1


def test_stats_watch_prints_json_lines(env: dict[str, str]) -> None:
    result = bucketly_cli("stats", "--watch", "--interval", "0.1", "--count", "3")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert len(lines) == 3
    assert all("uptime" in json.loads(line) for line in lines)


# -- connection settings -------------------------------------------------------------------------


def test_flag_after_the_subcommand_wins(env: dict[str, str]) -> None:
    port = env["BUCKETLY_PORT"]
    result = bucketly_cli("--port", str(closed_port()), "ping", "--port", port)
    assert result.code == 0, result.err
    flags_before = bucketly_cli("--host", "127.0.0.1", "--port", port, "--json", "ping")
    assert flags_before.code == 0, flags_before.err


def test_profiles(env: dict[str, str], daemon: RunningServer, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        'default_profile = "broken"\n'
        "[profiles.broken]\n"
        f"port = {closed_port()}\n"
        "[profiles.test]\n"
        f'host = "{daemon.host}"\nport = {daemon.port}\nuser = "admin"\n'
        'password_env = "MY_TEST_PASSWORD"\ntimeout = 5\n'
    )
    monkeypatch.setenv("BUCKETLY_CONFIG", str(config))
    monkeypatch.setenv("MY_TEST_PASSWORD", "admin")
    for name in ("BUCKETLY_HOST", "BUCKETLY_PORT", "BUCKETLY_USER", "BUCKETLY_PASSWORD"):
        monkeypatch.delenv(name)

    assert bucketly_cli("--profile", "test", "whoami").json()["user"] == "admin"
    assert bucketly_cli("whoami", "--profile", "test").code == 0
    monkeypatch.setenv("BUCKETLY_PROFILE", "test")
    assert bucketly_cli("whoami").code == 0
    monkeypatch.delenv("BUCKETLY_PROFILE")

    default = bucketly_cli("ping")  # default_profile: the one with a closed port
    assert default.code == 6
    assert_one_line_error(default, "cannot connect")
    monkeypatch.setenv("BUCKETLY_PORT", str(daemon.port))  # the environment beats a profile
    assert bucketly_cli("ping").code == 0

    unknown = bucketly_cli("--profile", "nope", "ping")
    assert unknown.code == 2
    assert_one_line_error(unknown, "no profile 'nope'", "broken, test")

    config.write_text("[profiles.test]\nprot = 1\n")
    typo = bucketly_cli("--profile", "test", "ping")
    assert typo.code == 2
    assert_one_line_error(typo, "unknown key 'prot'")
    config.write_text("[profiles.test\n")
    assert bucketly_cli("ping").code == 2


# -- errors and exit codes -----------------------------------------------------------------------


def test_cannot_connect(env: dict[str, str]) -> None:
    result = bucketly_cli("ping", "--port", str(closed_port()))
    assert result.code == bucketly.BucketlyConnectionError.exit_code == 6
    assert_one_line_error(result, "cannot connect", "BUCKETLY_PORT")


def test_wrong_password(env: dict[str, str]) -> None:
    result = bucketly_cli("whoami", "--password", "wrong")
    assert result.code == bucketly.AuthFailed.exit_code == 3
    assert_one_line_error(result, "wrong password")


def test_no_password_and_no_terminal(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BUCKETLY_PASSWORD")
    result = bucketly_cli("whoami")
    assert result.code == 3
    assert_one_line_error(result, "no password for user 'admin'", "BUCKETLY_PASSWORD")


def test_not_logged_in(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BUCKETLY_USER")
    assert bucketly_cli("ping").code == 0  # ping needs no login
    result = bucketly_cli("bucket", "list")
    assert result.code == bucketly.AuthRequired.exit_code == 3
    assert_one_line_error(result, "BUCKETLY_USER")


def test_verbose_shows_the_traceback(env: dict[str, str]) -> None:
    result = bucketly_cli("bucket", "info", "nope", "--verbose")
    assert result.code == 2
    assert result.err.startswith("bucketly: error: ")
    assert "Traceback" in result.err


def test_usage_errors(env: dict[str, str]) -> None:
    result = bucketly_cli("bucket", "frobnicate")
    assert result.code == 2
    assert "No such command" in result.err
    assert bucketly_cli("--help").code == 0
    assert bucketly_cli("--version").out.strip().endswith(bucketly.__version__)


# -- passwords and users -------------------------------------------------------------------------


def test_passwd_from_stdin(tmp_path: Path, env: dict[str, str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    # A server of its own: the other tests log in as admin/admin.
    with run_server(handlers=EXAMPLE_HANDLERS, database=tmp_path / "pw.dat") as server:
        monkeypatch.setenv("BUCKETLY_PORT", str(server.port))
        assert bucketly_cli("whoami").json()["must_change_password"] is True
        changed = bucketly_cli("passwd", "--stdin", input="s3cret\n")
        assert changed.code == 0, changed.err
        assert bucketly_cli("whoami").code == 3  # the old password no longer works
        monkeypatch.setenv("BUCKETLY_PASSWORD", "s3cret")
        assert bucketly_cli("whoami").json()["must_change_password"] is False
        same = bucketly_cli("user", "passwd", "admin", "--stdin", input="s3cret\n")
        assert same.code == 2
        assert_one_line_error(same, "must differ")
        no_terminal = bucketly_cli("passwd")
        assert no_terminal.code == 3
        assert_one_line_error(no_terminal, "--stdin")


def test_user_and_token_commands_against_the_server(
        tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every user, permission, token and audit command, each checked by its effect."""
    # A server of its own, so that its audit log holds only what this test does.
    with run_server(handlers=EXAMPLE_HANDLERS, database=tmp_path / "users.dat") as server:
        monkeypatch.setenv("BUCKETLY_PORT", str(server.port))
        assert bucketly_cli("bucket", "create", "clicks.a", "EventCounter").code == 0
        added = bucketly_cli("user", "add", "carol", "--stdin", input="carolpw1\n")
        assert added.code == 0, added.err
        assert added.json() == {"user": "carol", "created": True}
        assert "carol" in [u["user"] for u in bucketly_cli("user", "list").json()]
        assert bucketly_cli("user", "passwd", "carol", "--stdin", input="carolpw2\n").code == 0

        assert bucketly_cli("grant", "carol", "view").code == 0
        assert bucketly_cli("grant", "carol", "send", "clicks.*").code == 0
        granted = bucketly_cli("permissions", "carol", "--json").json()
        assert {"permission": "view", "pattern": "*"} in granted
        assert {"permission": "send", "pattern": "clicks.*"} in granted
        assert bucketly_cli("revoke", "carol", "view").code == 0
        assert bucketly_cli("permissions", "carol", "--json").json() == [
            {"permission": "send", "pattern": "clicks.*"}]
        assert bucketly_cli("grant", "carol", "create_token").code == 0

        monkeypatch.setenv("BUCKETLY_USER", "carol")
        monkeypatch.setenv("BUCKETLY_PASSWORD", "carolpw1")
        assert bucketly_cli("whoami").code == 3  # 'user passwd' replaced that password
        monkeypatch.setenv("BUCKETLY_PASSWORD", "carolpw2")
        assert bucketly_cli("send", "clicks.a", "1").code == 0  # granted
        assert bucketly_cli("view", "clicks.a", "total").code == 3  # revoked

        created = bucketly_cli(
            "tokens", "create", "--name", "ci", "--grant", "send:clicks.*", "--expires", "3600"
        )
        assert created.code == 0, created.err
        token = created.json()
        assert token["token"] and token["name"] == "ci"
        assert token["grants"] == [{"permission": "send", "pattern": "clicks.*"}]
        assert token["expires_at"] == pytest.approx(time.time() + 3600, abs=60)
        assert [t["id"] for t in bucketly_cli("tokens").json()] == [token["id"]]
        monkeypatch.delenv("BUCKETLY_USER")
        monkeypatch.delenv("BUCKETLY_PASSWORD")
        monkeypatch.setenv("BUCKETLY_TOKEN", token["token"])
        assert bucketly_cli("whoami").json()["user"] == "carol"
        assert bucketly_cli("send", "clicks.a", "2").code == 0

        monkeypatch.delenv("BUCKETLY_TOKEN")
        monkeypatch.setenv("BUCKETLY_USER", "admin")
        monkeypatch.setenv("BUCKETLY_PASSWORD", "admin")
        assert bucketly_cli("view", "clicks.a", "total").json() == 2
        owned = bucketly_cli("tokens", "list", "--owner", "carol").json()
        assert [t["id"] for t in owned] == [token["id"]]
        assert bucketly_cli("tokens", "list").json() == []  # admin's own: none
        bad_id = bucketly_cli("tokens", "revoke", "abc")
        assert bad_id.code == 2
        assert_one_line_error(bad_id)
        assert bucketly_cli("tokens", "revoke", str(token["id"])).code == 0
        assert bucketly_cli("tokens", "list", "--owner", "carol").json() == []
        assert bucketly_cli("user", "delete", "carol", "--yes").code == 0
        assert "carol" not in [u["user"] for u in bucketly_cli("user", "list").json()]

        monkeypatch.setenv("BUCKETLY_TOKEN", token["token"])
        assert bucketly_cli("whoami").code == 3  # revoked
        monkeypatch.delenv("BUCKETLY_TOKEN")

        entries = bucketly_cli("audit").json()
        assert entries == sorted(entries, key=lambda e: -e["id"])
        events = {e["event"] for e in entries}
        assert {"user_created", "password_set", "granted", "revoked", "token_created",
                "token_revoked", "user_deleted"} <= events
        assert all("carolpw" not in repr(e) for e in entries)
        recent = bucketly_cli("audit", "-n", "2").json()
        assert len(recent) == 2
        assert recent == sorted(recent, key=lambda e: -e["id"])


def test_user_management(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    bucketly_cli("bucket", "create", "granted", "EventCounter")
    added = bucketly_cli("user", "add", "bob", "--stdin", input="bobpw\n")
    assert added.code == 0, added.err
    assert "bob" in json.dumps(bucketly_cli("user", "list").json())
    assert bucketly_cli("grant", "bob", "view", "granted").code == 0
    permissions = json.dumps(bucketly_cli("permissions", "bob").json())
    assert "view" in permissions and "granted" in permissions

    monkeypatch.setenv("BUCKETLY_USER", "bob")
    monkeypatch.setenv("BUCKETLY_PASSWORD", "bobpw")
    assert bucketly_cli("view", "granted", "total").json() == 0
    denied = bucketly_cli("send", "granted", "1")
    assert denied.code == bucketly.PermissionDenied.exit_code == 3
    assert_one_line_error(denied, "bucketly grant")

    monkeypatch.setenv("BUCKETLY_USER", "admin")
    monkeypatch.setenv("BUCKETLY_PASSWORD", "admin")
    assert bucketly_cli("revoke", "bob", "view", "granted").code == 0
    assert bucketly_cli("user", "passwd", "bob", "--stdin", input="newbobpw\n").code == 0
    assert bucketly_cli("user", "delete", "bob", "--yes").code == 0


def test_tokens(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    # A token is never issued to an account with its initial password: use a user of our own.
    assert bucketly_cli("user", "add", "tina", "--stdin", input="tinapw\n").code == 0
    monkeypatch.setenv("BUCKETLY_USER", "tina")
    monkeypatch.setenv("BUCKETLY_PASSWORD", "tinapw")
    denied = bucketly_cli("tokens", "create", "--name", "ci")
    assert denied.code == 3
    assert_one_line_error(denied, "lacks permission 'create_token'")
    monkeypatch.setenv("BUCKETLY_USER", "admin")
    monkeypatch.setenv("BUCKETLY_PASSWORD", "admin")
    assert bucketly_cli("grant", "tina", "create_token").code == 0
    monkeypatch.setenv("BUCKETLY_USER", "tina")
    monkeypatch.setenv("BUCKETLY_PASSWORD", "tinapw")
    created = bucketly_cli("tokens", "create", "--name", "ci")
    assert created.code == 0, created.err
    token = created.json()
    assert token["token"]
    assert str(token["id"]) in json.dumps(bucketly_cli("tokens", "list").json())

    # Log in with the token alone (it wins over a user and password).
    monkeypatch.setenv("BUCKETLY_TOKEN", token["token"])
    monkeypatch.delenv("BUCKETLY_PASSWORD")
    assert bucketly_cli("whoami").json()["user"] == "tina"

    monkeypatch.delenv("BUCKETLY_TOKEN")
    monkeypatch.setenv("BUCKETLY_PASSWORD", "tinapw")
    assert bucketly_cli("tokens", "revoke", str(token["id"])).code == 0
    monkeypatch.setenv("BUCKETLY_TOKEN", token["token"])
    revoked = bucketly_cli("whoami")
    assert revoked.code == 3
    assert_one_line_error(revoked)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls(env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    with run_server(handlers=EXAMPLE_HANDLERS, database=tmp_path / "tls.dat",
                    extra_args=["--tls-cert", str(cert), "--tls-key", str(key)]) as server:
        monkeypatch.setenv("BUCKETLY_PORT", str(server.port))
        result = bucketly_cli("whoami", "--tls-ca", str(cert))
        assert result.code == 0, result.err
        assert result.json()["user"] == "admin"
        monkeypatch.setenv("BUCKETLY_TLS_CA", str(cert))
        assert bucketly_cli("ping").code == 0
        monkeypatch.delenv("BUCKETLY_TLS_CA")
        untrusted = bucketly_cli("ping", "--tls")  # the system's CAs don't know our cert
        assert untrusted.code != 0
        assert_one_line_error(untrusted)
        plain = bucketly_cli("ping", "--timeout", "5")
        assert plain.code != 0
        assert_one_line_error(plain)


# -- the real console script, with real pipes ----------------------------------------------------


def test_console_script_pipes(env: dict[str, str]) -> None:
    created = subprocess_cli("bucket", "create", "piped", "EventCounter", env=env)
    assert created.returncode == 0, created.stderr
    events = b"".join(b"%d\n" % i for i in range(2500))
    sent = subprocess_cli("send", "piped", input=events, env=env)
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout) == {"bucket": "piped", "sent": 2500}
    assert sent.stderr == b""  # no progress bar into a pipe
    listed = subprocess_cli("bucket", "list", env=env)
    assert "piped" in [b["name"] for b in json.loads(listed.stdout)]
    assert json.loads(subprocess_cli("view", "piped", "total", env=env).stdout) == 2500

    unknown = subprocess_cli("view", "nope", "total", env=env)
    assert unknown.returncode == 2
    assert unknown.stdout == b""
    assert unknown.stderr.decode().startswith("bucketly: error: ")
    assert unknown.stderr.count(b"\n") == 1


def test_json_of_values_json_lacks() -> None:
    assert to_json({"b": b"\x00\xff", 1: [True, None]}) == (
        '{"b":{"$base64":"AP8="},"1":[true,null]}')


def test_a_reader_that_goes_away_is_not_an_error(env: dict[str, str]) -> None:
    full_env = {k: v for k, v in os.environ.items() if k not in _CLI_ENV}
    full_env.update(env)
    process = subprocess.Popen(
        [sys.executable, "-m", "bucketly.cli", "stats", "--watch", "--interval", "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env,
    )
    assert process.stdout is not None and process.stderr is not None
    assert json.loads(process.stdout.readline())["server"]  # like '| head -n 1'
    process.stdout.close()
    assert process.wait(30) == 141
    assert process.stderr.read() == b""
    process.stderr.close()


def test_shell_reads_commands_from_a_pipe(env: dict[str, str]) -> None:
    script = (b"# a comment\n"
              b"bucket create scripted EventCounter\n"
              b"send scripted 1\n"
              b"\n"
              b"bucketly send scripted 2\n"
              b"view scripted total\n")
    result = subprocess_cli(input=script, env=env)
    assert result.returncode == 0, result.stderr
    outputs = [json.loads(line) for line in result.stdout.splitlines()]
    assert outputs[-1] == 2
    failing = subprocess_cli(input=b"view scripted total\nview nope total\n", env=env)
    assert failing.returncode == 2
    assert json.loads(failing.stdout) == 2
