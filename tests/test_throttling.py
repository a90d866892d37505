"""Login throttling on a live server: guessers are slowed, the right people are not locked out."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bucketly.testing import RunningServer, run_server

from .conftest import TEST_HANDLERS, RawConnection

FREE = 5  # the default --auth-free-failures, as docs/security.md states it


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    with run_server(handlers=TEST_HANDLERS, database=tmp_path / "db.dat") as running:
        admin = RawConnection(running.host, running.port)
        admin.auth()
        admin.call(1, "change_password", old_password="admin", new_password="admin-pw-2")
        admin.call(2, "create_user", user="bob", password="bob-pw")
        admin.call(3, "grant", user="bob", permission="send", pattern="b")
        admin.call(4, "create_user", user="carol", password="carol-pw")
        admin.close()
        yield running


def _auth(conn: RawConnection, user: str, password: str) -> str:
    reply = conn.call(1, "auth", user=user, password=password)
    return getattr(reply, "code", "ok")


def _auth_once(server: RunningServer, user: str, password: str) -> str:
    """On a connection of its own (a connection may send only 16 frames before logging in)."""
    conn = RawConnection(server.host, server.port)
    try:
        return _auth(conn, user, password)
    finally:
        conn.close()


def test_exactly_the_documented_number_of_failures_then_refused(server: RunningServer) -> None:
    conn = RawConnection(server.host, server.port)
    codes = [_auth(conn, "bob", "typo") for _ in range(FREE + 1)]
    assert codes == ["auth_failed"] * FREE + ["too_many_attempts"]
    conn.close()


def test_a_correct_password_after_typos_works_and_clears_them(server: RunningServer) -> None:
    conn = RawConnection(server.host, server.port)
    assert [_auth(conn, "bob", "typo") for _ in range(FREE - 1)] == ["auth_failed"] * (FREE - 1)
    assert _auth(conn, "bob", "bob-pw") == "ok"
    # Cleared: the same number of typos again is not refused unchecked.
    assert [_auth(conn, "bob", "typo") for _ in range(FREE - 1)] == ["auth_failed"] * (FREE - 1)
    assert _auth(conn, "bob", "bob-pw") == "ok"
    conn.close()


def test_other_peoples_failures_from_the_same_address_do_not_lock_out_a_known_user(
    server: RunningServer,
) -> None:
    bob = RawConnection(server.host, server.port)
    assert _auth(bob, "bob", "bob-pw") == "ok"  # bob logs in from here: a known pair
    # A sprayer behind the same address: it closes the address.
    codes = [_auth_once(server, f"user{n}", "guess") for n in range(FREE + 1)]
    assert codes == ["auth_failed"] * FREE + ["too_many_attempts"]
    assert _auth(bob, "bob", "bob-pw") == "ok"
    # Someone who never logged in from here is refused while the address is closed.
    assert _auth_once(server, "carol", "carol-pw") == "too_many_attempts"
    bob.close()


def test_token_logins_are_not_throttled(server: RunningServer) -> None:
    admin = RawConnection(server.host, server.port)
    assert _auth(admin, "admin", "admin-pw-2") == "ok"
    token = admin.call(2, "create_token", name="t").result["token"]
    for _ in range(FREE):
        _auth_once(server, "nobody", "guess")
    assert _auth_once(server, "nobody", "guess") == "too_many_attempts"  # the address is closed
    producer = RawConnection(server.host, server.port)
    for _ in range(12):  # token logins from the same address, all of them fine
        assert producer.call(3, "auth", token=token).result["user"] == "admin"
    for _ in range(2):  # wrong tokens: refused, but they close nothing
        assert producer.call(4, "auth", token="bkt_1_" + "0" * 32).code == "auth_failed"
    assert producer.call(5, "auth", token=token).result["user"] == "admin"
    producer.close()
    admin.close()
