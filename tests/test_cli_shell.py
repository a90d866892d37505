"""The ``bucketly`` CLI on a terminal: the interactive shell, prompts, live views, Ctrl-C.

Each test runs the real CLI in a subprocess on a pseudo-terminal that is its controlling
terminal (so readline, getpass, rich and Ctrl-C behave as for a person), and waits for each
expected output with a deadline: no sleeping and hoping.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bucketly.testing import RunningServer, run_server

from .conftest import EXAMPLE_HANDLERS

#: Longest wait for one expected output; generous, as CI machines can be slow.
DEADLINE = 20.0

# Escape sequences (colours, cursor moves, bracketed paste) and carriage returns.
_NOISE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>]|\x1b\][^\x07]*\x07|\r")

#: Runs in the child: become the session's leader's controlling terminal, then the CLI.
_LAUNCH = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, '-m', 'bucketly.cli', *sys.argv[1:]])"
)


class Terminal:
    """A CLI process on a pseudo-terminal: ``send`` keystrokes, ``expect`` output."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
        self.process = subprocess.Popen(
            [sys.executable, "-c", _LAUNCH, *args], stdin=slave, stdout=slave, stderr=slave,
            env=env, start_new_session=True, close_fds=True,
        )
        os.close(slave)
        self.master = master
        self.text = ""  # everything printed so far, without escape sequences
        self.seen = 0  # where the next expect() starts looking
        self.closed = False

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the child closed the terminal
            data = b""
        if not data:
            self.closed = True
            return False
        self.text += _NOISE.sub("", data.decode("utf-8", "replace"))
        return True

    def expect(self, pattern: str, timeout: float = DEADLINE) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.text, self.seen)
            if match:
                self.seen = match.end()
                return match
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed:
                raise AssertionError(
                    f"no output matched {pattern!r} within {timeout}s; the terminal shows, "
                    f"from where this expect started looking:\n{self.text[self.seen:][-3000:]!r}"
                )
            self._read(min(remaining, 0.5))

    def send(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def line(self, text: str) -> None:
        self.send(text + "\r")

    def wait(self, timeout: float = DEADLINE) -> int:
        """Read everything until the process closes the terminal; return its exit status."""
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            self._read(0.5)
        return self.process.wait(max(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self.master)


def interrupt(term: Terminal, expected: str) -> None:
    """Press Ctrl-C until ``expected`` shows (three tries).

    CPython's readline only notices a SIGINT that interrupts its select(): one that arrives
    while it is busy with a key stays pending until the next interruption. A person never sees
    that; a test that types faster than any person can, so it presses again.
    """
    for attempt in range(3):
        term.send("\x03")
        try:
            term.expect(expected, timeout=DEADLINE / 4)
            return
        except AssertionError:
            if attempt == 2:
                raise


@pytest.fixture(scope="module")
def daemon() -> Iterator[RunningServer]:
    with run_server(handlers=EXAMPLE_HANDLERS) as server:
        yield server


@pytest.fixture
def terminal_env(daemon: RunningServer, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUCKETLY_")}
    env.update({
        "BUCKETLY_HOST": daemon.host,
        "BUCKETLY_PORT": str(daemon.port),
        "BUCKETLY_USER": "admin",
        "BUCKETLY_PASSWORD": "admin",
        "BUCKETLY_CONFIG": str(tmp_path / "none.toml"),
        "BUCKETLY_HISTORY": str(tmp_path / "history"),
        "TERM": "xterm",
        "NO_COLOR": "1",
        "COLUMNS": "160",
        "LINES": "50",
    })
    env.pop("FORCE_COLOR", None)
    return env


@pytest.fixture
def spawn(terminal_env: dict[str, str]) -> Iterator[object]:
    opened: list[Terminal] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Terminal:
        terminal = Terminal(list(args), env if env is not None else terminal_env)
        opened.append(terminal)
        return terminal

    yield start
    for terminal in opened:
        terminal.close()


def test_interactive_shell(spawn, terminal_env, daemon, tmp_path) -> None:  # type: ignore[no-untyped-def]
    prompt = re.escape(f"bucketly admin@{daemon.host}:{daemon.port}> ")
    term = spawn()
    term.expect("connected to")
    term.expect(prompt)

    term.line("bucket create shellbucket UniqueClicks")
    term.expect("created bucket shellbucket")
    term.expect(prompt)

    # Tab completion: a command of a group, a bucket name, a view name.
    term.send("bucket inf\t")
    term.expect("bucket info ")
    term.send("shellb\t")
    term.expect("shellbucket ")
    term.send("\r")
    term.expect(r"handler\s+UniqueClicks")  # a table, for people
    term.expect(prompt)

    term.line("""send shellbucket '{"url": "/x", "user": "u1"}'""")
    term.expect("sent 1 event to shellbucket")
    term.expect(prompt)
    term.send("view shellbucket \t")  # the views are count and top: no single completion
    term.send("\t")  # a second Tab lists them
    term.expect(r"count\s+top")
    term.send("to\t")
    term.expect("top ")
    term.send("\r")
    term.expect(r"/x\s+1")
    term.expect(prompt)

    # An error is one line, and the shell carries on.
    term.line("view nosuchbucket top")
    term.expect(r"bucketly: error: .*nosuchbucket.*bucketly bucket list")
    term.expect(prompt)
    term.line("frobnicate")
    term.expect("No such command")
    term.expect(prompt)
    term.line("help view")
    term.expect(r"Usage: bucketly view \[OPTIONS\] BUCKET VIEW")
    term.expect(prompt)

    # Ctrl-C drops the line being typed, not the shell.
    term.send("half a line")
    term.expect("half a line")
    interrupt(term, prompt)
    term.line("exit")
    assert term.wait() == 0
    history = (tmp_path / "history").read_text()
    assert "bucket create shellbucket UniqueClicks" in history
    assert "half a line" not in history

    # History comes back in the next session (up arrow: "exit", then "help view").
    term = spawn()
    term.expect(prompt)
    term.send("\x1b[A")
    term.expect("exit")
    term.send("\x1b[A")
    term.expect(re.escape("help view"))
    term.send("\x15")  # Ctrl-U: clear the line
    term.send("\x04")  # Ctrl-D: leave
    assert term.wait() == 0


def test_password_prompt(spawn, terminal_env) -> None:  # type: ignore[no-untyped-def]
    env = dict(terminal_env)
    del env["BUCKETLY_PASSWORD"]
    term = spawn("whoami", env=env)
    term.expect(r"Password for admin@[\d.]+:\d+: ")
    term.line("admin")
    term.expect(r"user admin")
    term.expect("still has its default password")  # the reminder, on a terminal
    assert term.wait() == 0
    assert "admin\n" not in term.text.split("Password for", 1)[1].split("user admin")[0]

    term = spawn("whoami", env=env)
    term.expect("Password for")
    term.line("wrong")
    term.expect("bucketly: error: unknown user or wrong password")
    assert term.wait() == 3


def test_send_progress_and_ctrl_c(spawn, daemon, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with daemon.client() as client:
        client.create_bucket("typed", "EventCounter")
    term = spawn("send", "typed")
    term.expect("reading events from the terminal")
    term.line("1")
    term.line("2")
    # The progress bar (on stderr). Wait until both lines are read: Ctrl-C discards what the
    # terminal holds unread.
    term.expect(r"sending to typed.* 2 events")
    term.send("\x03")
    term.expect("bucketly: error: interrupted")
    assert term.wait() == 130
    with daemon.client() as client:  # what was typed before Ctrl-C was sent
        assert client.view("typed", "total") == 2

    path = tmp_path / "events.jsonl"
    path.write_text("".join(f"{i}\n" for i in range(20000)))
    term = spawn("send", "typed", "--file", str(path))
    term.expect(r"sent 20,000 events to typed")
    assert term.wait() == 0


def test_stats_watch_refreshes_in_place(spawn, daemon) -> None:  # type: ignore[no-untyped-def]
    with daemon.client() as client:
        client.create_bucket("watched", "EventCounter")
        client.send_many("watched", list(range(10)))
    term = spawn("stats", "--watch", "--interval", "0.2", "--count", "3")
    term.expect(r"bucket\s+events\s+events/s")
    term.expect(r"watched\s+10\s+0\.0/s")  # the second refresh knows the rate
    term.expect("Ctrl-C to quit")
    assert term.wait() == 0

    term = spawn("stats", "--watch", "--interval", "0.2")
    term.expect(r"watched\s+10")
    term.send("\x03")
    assert term.wait() == 0  # Ctrl-C is how one leaves --watch


def test_json_on_a_terminal_is_indented(spawn) -> None:  # type: ignore[no-untyped-def]
    term = spawn("whoami", "--json")
    term.expect(r"\}\s*$")
    assert term.wait() == 0
    shown = term.text[term.text.index("{"):]
    assert json.loads(shown)["user"] == "admin"
    assert "\n  " in shown
