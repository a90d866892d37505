"""The Python clients, sync and asyncio, through one parametrized suite against a real server."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

import bucketly
from bucketly.testing import RunningServer


def test_bucket_lifecycle(client: Any) -> None:
    info = client.create_bucket("clicks", "Recorder", config={"a": 1})
    assert (info["name"], info["handler"], info["config"], info["durable"]) == (
        "clicks",
        "Recorder",
        {"a": 1},
        False,
    )
    assert [b["name"] for b in client.buckets()] == ["clicks"]
    assert client.bucket_info("clicks")["handler"] == "Recorder"
    with pytest.raises(bucketly.BucketExists):
        client.create_bucket("clicks", "Recorder")
    client.delete_bucket("clicks")
    assert client.buckets() == []
    with pytest.raises(bucketly.UnknownBucket):
        client.bucket_info("clicks")


def test_send_flush_view_dump(client: Any) -> None:
    client.create_bucket("b", "Recorder")
    for i in range(2500):
        client.send("b", {"i": i})
    client.flush()
    assert client.view("b", "count") == 2500
    assert client.dump("b")["events"][:2] == [{"i": 0}, {"i": 1}]
    assert client.view("b", "echo", value={"nested": [1, 2]}, twice=True) == [
        {"nested": [1, 2]},
        {"nested": [1, 2]},
    ]


def test_a_view_sees_every_send_before_it_without_flush(client: Any) -> None:
    client.create_bucket("b", "Recorder")
    for i in range(10):
        client.send("b", i)
        assert client.view("b", "count") == i + 1


def test_send_many_and_batching(client: Any) -> None:
    client.create_bucket("b", "BatchCounter")
    client.send_many("b", list(range(2500)))
    client.flush()
    # 1,000 events per frame by default: 3 frames, so 3 handler calls.
    assert client.view("b", "stats") == {"batches": 3, "total": 2500}


def test_linger_writes_a_partial_batch_without_flush(connect: Any) -> None:
    writer = connect(linger=0.01)
    reader = connect()
    writer.create_bucket("b", "Recorder")
    writer.send("b", "lonely")
    # No flush: the linger timer must write it. Another connection polls with a deadline.
    import time

    deadline = time.monotonic() + 10
    while reader.view("b", "count") != 1:
        assert time.monotonic() < deadline, "the lingering event was never written"
        time.sleep(0.01)


def test_errors_of_buffered_sends_are_raised_by_flush(client: Any) -> None:
    client.create_bucket("b", "Recorder")
    client.send("b", 1)
    client.send("missing", 2)
    client.send("b", 3)
    with pytest.raises(bucketly.UnknownBucket) as info:
        client.flush()
    assert info.value.bucket == "missing" and info.value.events == [2]
    assert info.value.code == "unknown_bucket"
    client.flush()  # reported once only
    assert client.view("b", "all") == [1, 3]


def test_typed_errors(client: Any) -> None:
    client.create_bucket("b", "Recorder")
    with pytest.raises(bucketly.UnknownView):
        client.view("b", "missing")
    with pytest.raises(bucketly.BadArgument):
        client.view("b", "echo")
    with pytest.raises(bucketly.HandlerError, match="ZeroDivisionError"):
        client.view("b", "broken")
    with pytest.raises(bucketly.UnknownHandler):
        client.create_bucket("c", "Missing")
    with pytest.raises(bucketly.HandlerError, match="config rejected"):
        client.create_bucket("c", "Recorder", config={"reject": True})
    assert [b["name"] for b in client.buckets()] == ["b"]


def test_wrong_password_raises_auth_failed(connect: Any) -> None:
    with pytest.raises(bucketly.AuthFailed):
        connect(password="wrong")


def test_no_credentials_means_auth_required(connect: Any) -> None:
    anonymous = connect(user=None)
    assert anonymous.ping() == "pong"
    with pytest.raises(bucketly.AuthRequired):
        anonymous.buckets()


def test_handlers_whoami_stats(client: Any) -> None:
    names = {h["name"]: h for h in client.handlers()}
    assert set(names) == {"Recorder", "BatchCounter", "Publisher", "Exiter", "Fragile"}
    assert "count" in names["Recorder"]["views"]
    assert names["Publisher"]["jobs"] == {"publish": 3600.0}
    me = client.whoami()
    assert me["user"] == "admin"
    assert {"permission": "*", "pattern": "*"} in me["permissions"]
    client.create_bucket("b", "Recorder")
    client.send_many("b", [1, 2, 3])
    client.flush()
    stats = client.stats()
    assert stats["events"] == 3 and stats["buckets"]["b"]["events"] == 3
    assert stats["connections"] >= 1


def test_change_password(connect: Any) -> None:
    client = connect()
    with pytest.raises(bucketly.AuthFailed):
        client.change_password("wrong", "new-secret")
    client.change_password("admin", "new-secret")
    assert client.whoami()["must_change_password"] is False
    with pytest.raises(bucketly.AuthFailed):
        connect(password="admin")
    assert connect(password="new-secret").whoami()["user"] == "admin"


def test_connection_error_when_nobody_listens() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(bucketly.BucketlyConnectionError, match="cannot connect"):
        bucketly.Client("127.0.0.1", port)


def test_nothing_sent_is_silently_lost_when_the_server_dies(
    connect: Any, server: RunningServer, tmp_path: Any
) -> None:
    """Every event handed to send() is either reported unacknowledged or delivered later."""
    from bucketly.testing import RunningServer as Server
    from bucketly.testing import bucketlyd_command

    from .conftest import TEST_HANDLERS

    client = connect(max_in_flight=1000)
    client.create_bucket("b", "Recorder")
    client.flush()
    server.kill()
    sent: list[int] = []
    reported: list[int] = []
    for i in range(5000):
        sent.append(i)
        try:
            client.send("b", i)
        except bucketly.ConnectionLost as exc:
            assert all(bucket == "b" for bucket, _ in exc.unacknowledged)
            reported += [e for _, events in exc.unacknowledged for e in events]
        except bucketly.BucketlyConnectionError:
            pass  # no server to reconnect to: the event stays buffered
    # The same database file and port: the bucket definition survives, its state does not.
    restarted = Server(bucketlyd_command(tmp_path / "db.dat", TEST_HANDLERS, server.port))
    try:
        restarted.wait_ready()
        client.flush()
        delivered = client.view("b", "all")
    finally:
        restarted.stop()
    assert sorted(reported + delivered) == sent, "an event was lost or delivered twice"


def test_async_sends_from_two_tasks_keep_their_buckets(server: RunningServer) -> None:
    """While one task writes another bucket's batch, a second task may start a batch of its
    own: the first task's events must not join it (they once did, tagged with its bucket)."""
    import asyncio

    async def main() -> tuple[Any, Any]:
        # max_in_flight=0: every batch written waits for its acknowledgement, which lets the
        # other task run in between.
        async with bucketly.AsyncClient(
            server.host, server.port, user="admin", password="admin", max_in_flight=0
        ) as client:
            await client.create_bucket("a", "Recorder")
            await client.create_bucket("b", "Recorder")
            await client.send("b", "b1")  # buffered: sending to "a" writes it first
            await asyncio.gather(client.send_many("a", ["a1"]), client.send("b", "b2"))
            await client.flush()
            return await client.view("a", "all"), await client.view("b", "all")

    in_a, in_b = asyncio.run(main())
    assert in_a == ["a1"]
    assert sorted(in_b) == ["b1", "b2"]



def _restart(server: RunningServer, tmp_path: Any, *extra_args: str) -> RunningServer:
    """A new bucketlyd on ``server``'s port and database file (the bucket definitions survive,
    the state of in-memory buckets does not), once it is ready."""
    from bucketly.testing import bucketlyd_command

    from .conftest import TEST_HANDLERS

    restarted = RunningServer(
        bucketlyd_command(tmp_path / "db.dat", TEST_HANDLERS, server.port, extra_args)
    )
    restarted.wait_ready()
    return restarted


def _two_batches_kept_then_refused(server: RunningServer, tmp_path: Any) -> Any:
    """A sync client holding two batches of bucket "b" (events 0-199) kept for resending, and
    a restarted server that refuses them unread (limit_exceeded, sent with no id) and closes
    the connection. Returns (client, that server)."""
    import signal

    # max_in_flight=1: on reconnecting, writing the second kept batch reads a reply first,
    # and that is where the refusal arrives.
    client = server.client(batch_size=100, max_in_flight=1, timeout=2.0)
    client.create_bucket("b", "Recorder")
    server.process.send_signal(signal.SIGSTOP)
    # Written to a server that reads nothing: the second batch waits for the first's reply,
    # which does not come within the timeout.
    with pytest.raises(bucketly.ConnectionLost, match="will be resent"):
        client.send_many("b", list(range(200)))
    server.kill()
    # 100 events make a frame of more than 64 values; an auth request fits.
    return client, _restart(server, tmp_path, "--max-frame-objects", "64")


def test_a_resend_refused_on_reconnect_is_resent_by_the_next_call(
    server: RunningServer, tmp_path: Any
) -> None:
    """Batches written while reconnecting, then stopped by an error that is not a lost
    connection, go back to be resent: the next calls raise that error again (they once raised
    an AssertionError, the batches stranded in flight), and nothing is lost or doubled."""
    from bucketly.errors import LimitExceeded

    client, limited = _two_batches_kept_then_refused(server, tmp_path)
    try:
        for _ in range(2):
            with pytest.raises((LimitExceeded, bucketly.ConnectionLost)):
                client.flush()
        limited.stop()
        restarted = _restart(server, tmp_path)
        try:
            client.flush()
            assert client.view("b", "all") == list(range(200))
            client.close()
        finally:
            restarted.stop()
    finally:
        limited.stop()
        with contextlib.suppress(bucketly.BucketlyError):
            client.close()  # a failure above left the client nowhere to deliver


def test_a_resend_refused_on_every_reconnect_is_given_up_and_reported(
    server: RunningServer, tmp_path: Any
) -> None:
    """Refused on RESEND_LIMIT + 1 connections, the batches are handed back to the user by a
    ConnectionLost (``unacknowledged``), never dropped silently."""
    from bucketly.client.common import RESEND_LIMIT
    from bucketly.errors import LimitExceeded

    client, limited = _two_batches_kept_then_refused(server, tmp_path)
    try:
        # The first connection broke once already; each flush below breaks one more. The
        # batches are given up by the last, which raises the refusal (the flush after it then
        # reports them) or, if the refused connection was found closed first, reports them.
        errors: list[Any] = []
        for _ in range(RESEND_LIMIT):
            with pytest.raises((LimitExceeded, bucketly.ConnectionLost)) as refused:
                client.flush()
            errors.append(refused.value)
        if not getattr(errors[-1], "unacknowledged", None):
            with pytest.raises(bucketly.ConnectionLost) as refused:
                client.flush()
            errors.append(refused.value)
        assert not any(getattr(e, "unacknowledged", None) for e in errors[:-1])
        assert errors[-1].unacknowledged == [("b", list(range(100))), ("b", list(range(100, 200)))]
        client.flush()  # nothing left to deliver
        client.close()
    finally:
        limited.stop()
        with contextlib.suppress(bucketly.BucketlyError):
            client.close()
