"""A durable bucket on a file system that fills up while a client sends to it.

The database file lives on a small file system of its own (a 12 MiB tmpfs; a loop-mounted ext4
file if tmpfs cannot be mounted). A sender thread sends numbered chunks with acknowledgements the
whole time; the test fills the file system with a filler file meanwhile. Then, while it is full:
the daemon is up, answers pings, refuses durable sends with ``storage_error`` and says so
(``stats``, its log), and takes non-durable sends. Then the filler is deleted and durable sends
succeed again, without a restart. Last, ``kill -9`` and a restart on the same file: the bucket
holds exactly the acknowledged chunks, in order, and no refused one.

Mounting needs root, which CI has: when neither way works, the test fails (with both reasons)
rather than skip.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import bucketly
from bucketly.testing import RunningServer, bucketlyd_command

HANDLERS = Path(__file__).parent / "durable_handlers.py"
#: Small enough to fill in a moment, large enough for the schema, the WAL and some commits.
FS_SIZE_MIB = 12
CHUNK = 50
#: Seconds any one step (a refusal, a success after the filler is gone) may take.
DEADLINE = 30.0


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A mounted FS_SIZE_MIB file system, unmounted afterwards; fails if none can be mounted."""
    mount = tmp_path / "small"
    mount.mkdir()
    tried = _run("mount", "-t", "tmpfs", "-o", f"size={FS_SIZE_MIB}m", "tmpfs", str(mount))
    reasons = [f"tmpfs: {tried.stderr.strip() or tried.returncode}"]
    if tried.returncode != 0:
        image = tmp_path / "small.ext4"
        with open(image, "wb") as f:
            f.truncate(FS_SIZE_MIB << 20)
        made = _run("mkfs.ext4", "-q", "-F", str(image))
        tried = made if made.returncode else _run("mount", "-o", "loop", str(image), str(mount))
        reasons.append(f"loop ext4: {tried.stderr.strip() or tried.returncode}")
    if tried.returncode != 0:
        pytest.fail(
            "cannot mount a small file system for the disk-full test (it needs root, as in "
            "CI): " + "; ".join(reasons)
        )
    try:
        yield mount
    finally:
        if _run("umount", str(mount)).returncode != 0:
            _run("umount", "-l", str(mount))


class Sender(threading.Thread):
    """Sends chunks of numbered events to durable bucket ``d``, one flush per chunk, until
    stopped; sorts each chunk into acknowledged or refused (``storage_error``)."""

    def __init__(self, server: RunningServer) -> None:
        super().__init__(daemon=True)
        self.client = server.client(batch_size=CHUNK)
        self.acked: list[int] = []
        self.refused: list[int] = []
        self.errors: list[bucketly.StorageError] = []
        self.first_ack = threading.Event()
        self.first_refusal = threading.Event()
        #: Set by the test once the filler is gone; ``back`` once a chunk is acked after it.
        self.freed = threading.Event()
        self.back = threading.Event()
        self.stopping = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            n = 0
            while not self.stopping.is_set():
                chunk = list(range(n, n + CHUNK))
                n += CHUNK
                freed = self.freed.is_set()
                self.client.send_many("d", chunk)
                try:
                    self.client.flush()
                except bucketly.StorageError as exc:
                    self.refused += chunk
                    self.errors.append(exc)
                    self.first_refusal.set()
                    continue
                self.acked += chunk
                self.first_ack.set()
                if freed:
                    self.back.set()
        except BaseException as exc:  # reported by the test
            self.failure = exc
        finally:
            self.client.close()

    def finish(self) -> None:
        self.stopping.set()
        self.join(DEADLINE)
        assert not self.is_alive()
        if self.failure is not None:
            raise self.failure


def _wait(event: threading.Event, what: str, sender: Sender) -> None:
    if not event.wait(DEADLINE):
        raise AssertionError(f"{what} did not happen within {DEADLINE} s ({sender.failure!r})")


def _fill(path: Path) -> int:
    """Write zeros to ``path`` until the file system is full; the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                written += f.write(b"\0" * 65536)
        except OSError:
            pass
        try:  # the last few bytes, so that not even a page is left
            while True:
                written += f.write(b"\0" * 512)
        except OSError:
            pass
    return written


def _start(db: Path, port: int = 0) -> RunningServer:
    server = RunningServer(bucketlyd_command(db, HANDLERS, port))
    server.wait_ready()
    return server


def test_a_full_disk_refuses_durable_sends_keeps_serving_and_recovers(small_fs: Path) -> None:
    db = small_fs / "db.dat"
    filler = small_fs / "filler"
    server = _start(db)
    try:
        with server.client() as admin:
            admin.create_bucket("d", "Ledger", durable=True)
            admin.create_bucket("n", "Ledger")
            sender = Sender(server)
            sender.start()
            _wait(sender.first_ack, "a first acknowledged chunk", sender)
            filled = _fill(filler)
            assert filled > 0 and shutil.disk_usage(small_fs).free < 64 * 1024
            _wait(sender.first_refusal, "a refusal with storage_error", sender)

            # Full: the daemon is up, answers, says why it refuses, takes non-durable sends.
            assert server.returncode is None
            started = time.perf_counter()
            assert admin.ping() == "pong"
            ping_while_full = time.perf_counter() - started
            error = sender.errors[0]
            assert error.code == "storage_error"
            assert "could not be written" in error.message and "not applied" in error.message
            assert "full" in error.message  # SQLite's own words: "database or disk is full"
            stats = admin.stats()["durable_log"]
            assert stats["failed_commits"] >= 1 and "full" in stats["last_error"]
            server.wait_for_log(r"durable log: could not write \d+ records .*full")
            admin.send("n", "still works")
            admin.flush()
            assert admin.view("n", "all") == ["still works"]
            refused_while_full = len(sender.refused)

            # Room again: durable sends work again, on the same running server.
            filler.unlink()
            sender.freed.set()
            _wait(sender.back, "an acknowledged chunk after the filler was deleted", sender)
            sender.finish()
            assert admin.ping() == "pong"
            assert server.returncode is None
        print(f"\n{FS_SIZE_MIB} MiB file system: {len(sender.acked)} events acknowledged, "
              f"{len(sender.refused)} refused ({refused_while_full} before the filler was "
              f"deleted), {stats['failed_commits']} failed commits; a ping while full took "
              f"{1e3 * ping_while_full:.1f} ms")

        # kill -9 and a restart on the same file: exactly the acknowledged chunks, in order.
        port = server.port
        server.kill()
        server = _start(db, port)
        with server.client() as client:
            state = client.view("d", "all")
        assert state == sender.acked
        assert not set(sender.refused) & set(state)
        assert sender.refused, "the disk never filled up"
    finally:
        server.kill()
