"""API tokens that cannot outlive their owner's intent (issue 16): the create_token permission,
tokens narrowed to some grants, tokens that expire, and what revokes them (docs/security.md,
"What ends a token or a login")."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import bucketly
from bucketly.errors import AuthFailed, AuthRequired, PermissionDenied
from bucketly.store.passwords import hash_password
from bucketly.store.schema import MIGRATIONS
from bucketly.store.tokens import hash_token_secret, new_token_secret, token_string
from bucketly.testing import RunningServer, run_server

from .conftest import TEST_HANDLERS


@pytest.fixture
def clients(server: RunningServer) -> Iterator[Callable[..., bucketly.Client]]:
    opened: list[bucketly.Client] = []

    def open_client(**credentials: Any) -> bucketly.Client:
        client = bucketly.Client(server.host, server.port, **credentials)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        try:
            client.close()
        except Exception:
            pass


@pytest.fixture
def admin(clients: Callable[..., bucketly.Client]) -> bucketly.Client:
    admin = clients(user="admin", password="admin")
    admin.change_password("admin", "admin-pw")
    admin.create_bucket("clicks", "Recorder")
    admin.create_bucket("orders", "Recorder")
    admin.create_user("ingest", "ingest-pw")
    admin.grant("ingest", "send", "*")
    admin.grant("ingest", "view", "*")
    return admin


def _eventually(check: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll ``check`` until it is true (a server-side sweep runs about once a second)."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.05)


def _denied(call: Callable[[], Any]) -> bool:
    try:
        call()
    except (PermissionDenied, AuthRequired):
        return True
    return False


def test_creating_a_token_takes_its_own_permission(
    admin: bucketly.Client, clients: Callable[..., bucketly.Client]
) -> None:
    ingest = clients(user="ingest", password="ingest-pw")
    with pytest.raises(PermissionDenied, match="create_token"):
        ingest.create_token("leaked-password-forever")
    assert admin.tokens(user="ingest") == []
    admin.grant("ingest", "create_token", "*")
    created = ingest.create_token("allowed")
    assert created["user"] == "ingest" and created["grants"] is None
    assert created["expires_at"] is None


def test_a_narrowed_token_does_only_what_it_was_narrowed_to(
    admin: bucketly.Client, clients: Callable[..., bucketly.Client]
) -> None:
    admin.grant("ingest", "create_token", "*")
    ingest = clients(user="ingest", password="ingest-pw")
    created = ingest.create_token("clicks only", grants=[("send", "clicks")])
    assert created["grants"] == [{"permission": "send", "pattern": "clicks"}]
    narrow = clients(token=created["token"])
    narrow.send("clicks", {"n": 1})
    narrow.flush()
    assert narrow.whoami()["token_permissions"] == [{"permission": "send", "pattern": "clicks"}]
    # The user may send to orders and view both; the token may not.
    ingest.send("orders", {"n": 2})
    ingest.flush()
    with pytest.raises(PermissionDenied):
        narrow.view("clicks", "count")
    narrow.send("orders", {"n": 3})
    with pytest.raises(PermissionDenied):
        narrow.flush()
    assert [b["name"] for b in narrow.buckets()] == ["clicks"]
    # Narrower than its owner only: not beyond, and a narrowed token mints nothing wider.
    with pytest.raises(PermissionDenied, match="only be narrowed to what you hold"):
        ingest.create_token(grants=[("delete", "clicks")])
    with pytest.raises(PermissionDenied):
        narrow.create_token()  # the token holds no create_token
    admin.grant("ingest", "create_token", "*")
    wide = ingest.create_token("send and create", grants=[("send", "*"), ("create_token", "*")])
    minter = clients(token=wide["token"])
    with pytest.raises(PermissionDenied, match="this connection's token"):
        minter.create_token(grants=[("view", "clicks")])
    inherited = minter.create_token("from a token")
    assert {(g["permission"], g["pattern"]) for g in inherited["grants"]} == {
        ("send", "*"), ("create_token", "*")
    }
    assert admin.view("clicks", "count") == 1


def test_a_revoked_grant_narrows_the_users_tokens_at_once(
    admin: bucketly.Client, clients: Callable[..., bucketly.Client]
) -> None:
    admin.grant("ingest", "create_token", "*")
    ingest = clients(user="ingest", password="ingest-pw")
    token = ingest.create_token("full")["token"]
    producer = clients(token=token)
    assert producer.view("clicks", "count") == 0
    admin.revoke("ingest", "view", "*")
    with pytest.raises(PermissionDenied):
        producer.view("clicks", "count")  # the same open connection, the next request
    producer.send("clicks", {"still": "sends"})
    producer.flush()


def test_an_expired_token_logs_no_one_in_and_ends_its_connections(
    admin: bucketly.Client, clients: Callable[..., bucketly.Client]
) -> None:
    admin.grant("ingest", "create_token", "*")
    ingest = clients(user="ingest", password="ingest-pw")
    created = ingest.create_token("short", expires_in=2)
    assert created["expires_at"] == pytest.approx(time.time() + 2, abs=1)
    producer = clients(token=created["token"])
    assert producer.view("clicks", "count") == 0
    _eventually(lambda: _denied(lambda: producer.view("clicks", "count")))
    with pytest.raises(AuthFailed, match="invalid or revoked token"):
        clients(token=created["token"])
    assert [t["id"] for t in ingest.tokens()] == []  # the sweep deleted it
    with pytest.raises(bucketly.BucketlyError, match="expires_in"):
        ingest.create_token(expires_in=0)


def test_a_password_change_revokes_every_token_and_ends_the_other_logins(
    admin: bucketly.Client, clients: Callable[..., bucketly.Client]
) -> None:
    admin.grant("ingest", "create_token", "*")
    ingest = clients(user="ingest", password="ingest-pw")
    token = ingest.create_token("before")["token"]
    by_token = clients(token=token)
    by_password = clients(user="ingest", password="ingest-pw")
    assert by_token.view("clicks", "count") == 0 and by_password.view("clicks", "count") == 0
    ingest.change_password("ingest-pw", "new-ingest-pw")
    assert ingest.view("clicks", "count") == 0  # the connection that changed it goes on
    with pytest.raises(AuthRequired):
        by_token.view("clicks", "count")
    with pytest.raises(AuthRequired):
        by_password.view("clicks", "count")
    with pytest.raises(AuthFailed):
        clients(token=token)
    assert ingest.tokens() == []
    events = [e for e in admin.audit(limit=20) if e["event"] == "token_revoked"]
    assert events and "password changed" in events[0]["detail"]


def test_set_password_and_user_deletion_end_tokens_and_logins(
    admin: bucketly.Client, clients: Callable[..., bucketly.Client]
) -> None:
    admin.grant("ingest", "create_token", "*")
    ingest = clients(user="ingest", password="ingest-pw")
    first = ingest.create_token("one")["token"]
    by_token = clients(token=first)
    admin.set_password("ingest", "set-by-admin")
    for conn in (ingest, by_token):
        with pytest.raises(AuthRequired):
            conn.view("clicks", "count")
    with pytest.raises(AuthFailed):
        clients(token=first)
    assert admin.view("clicks", "count") == 0  # admin's own login is untouched
    again = clients(user="ingest", password="set-by-admin")
    second = again.create_token("two")["token"]
    by_second = clients(token=second)
    admin.delete_user("ingest")
    for conn in (again, by_second):
        with pytest.raises(AuthRequired):
            conn.view("clicks", "count")
    with pytest.raises(AuthFailed):
        clients(token=second)


def test_a_token_made_before_scopes_still_logs_in_with_its_powers(tmp_path: Path) -> None:
    """A database file at schema version 4 (before tokens had grants and expiry), with a
    token in it: the migration keeps the token, and it does what its user can."""
    db = tmp_path / "old.dat"
    conn = sqlite3.connect(db)
    for number, sql in MIGRATIONS:
        if number > 4:
            break
        for statement in filter(str.strip, sql.split(";")):
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 4")
    now = time.time()
    conn.execute("INSERT INTO users VALUES ('admin', ?, 0, ?)", (hash_password("old-pw"), now))
    conn.execute("INSERT INTO grants VALUES ('admin', '*', '*')")
    secret = new_token_secret()
    cursor = conn.execute(
        "INSERT INTO tokens (user, name, secret_hash, created_at) VALUES ('admin', 'old', ?, ?)",
        (hash_token_secret(secret), now),
    )
    token = token_string(cursor.lastrowid, secret)  # type: ignore[arg-type]
    conn.commit()
    conn.close()
    with run_server(handlers=TEST_HANDLERS, database=db) as server:
        with bucketly.Client(server.host, server.port, token=token) as client:
            assert client.whoami()["token_permissions"] is None
            client.create_bucket("made-by-old-token", "Recorder")
            (listed,) = client.tokens()
            assert listed["grants"] is None and listed["expires_at"] is None
