"""Users, passwords, grants, API tokens, login throttling and the audit trail, on a live server.

Most tests run once with the sync client and once with the asyncio client (the ``connect``
fixture), since the CLI and applications use both.
"""

from __future__ import annotations

import socket
import sqlite3
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

import bucketly
from bucketly.errors import (
    AuthFailed,
    AuthRequired,
    BadArgument,
    PermissionDenied,
    TooManyAttempts,
    UnknownUser,
    UserExists,
)
from bucketly.protocol import ErrorReply
from bucketly.server.throttle import AUTH_BASE_DELAY, AUTH_TRUST_SECONDS, AuthThrottle, peer_key
from bucketly.store.passwords import ARGON2_MEMORY_KIB, ARGON2_PARALLELISM, ARGON2_TIME_COST
from bucketly.testing import RunningServer, run_server

from .conftest import TEST_HANDLERS, RawConnection


def _admin_with_bob(connect: Any, *grants: tuple[str, str]) -> tuple[Any, Any]:
    admin = connect()
    admin.create_user("bob", "bob-secret")
    for permission, pattern in grants:
        admin.grant("bob", permission, pattern)
    return admin, connect(user="bob", password="bob-secret")


def test_a_new_user_can_do_nothing_until_granted(connect: Any) -> None:
    admin, bob = _admin_with_bob(connect)
    admin.create_bucket("clicks.eu", "Recorder")
    for call in (
        lambda: bob.view("clicks.eu", "count"),
        lambda: bob.dump("clicks.eu"),
        lambda: bob.create_bucket("clicks.us", "Recorder"),
        lambda: bob.delete_bucket("clicks.eu"),
        lambda: bob.stats(),
        lambda: bob.users(),
        lambda: bob.grant("bob", "view", "*"),
        lambda: bob.audit(),
    ):
        with pytest.raises(PermissionDenied):
            call()
    bob.send("clicks.eu", 1)
    with pytest.raises(PermissionDenied):
        bob.flush()
    assert bob.buckets() == []
    assert bob.whoami()["permissions"] == []


def test_a_producer_gets_send_on_a_pattern_and_nothing_else(connect: Any) -> None:
    admin, bob = _admin_with_bob(connect, ("send", "clicks.*"))
    admin.create_bucket("clicks.eu", "Recorder", {"dsn": "postgresql://secret@db"})
    admin.create_bucket("orders", "Recorder")
    bob.send_many("clicks.eu", [1, 2, 3])
    bob.flush()
    assert admin.view("clicks.eu", "count") == 3
    bob.send("orders", 1)
    with pytest.raises(PermissionDenied):
        bob.flush()
    with pytest.raises(PermissionDenied):
        bob.view("clicks.eu", "count")
    with pytest.raises(PermissionDenied):
        bob.bucket_info("clicks.eu")
    # It sees the names it may send to, not their configs (which may hold credentials).
    assert bob.buckets() == [{"name": "clicks.eu"}]
    assert admin.permissions("bob") == [{"permission": "send", "pattern": "clicks.*"}]


def test_grants_and_revokes_apply_to_live_connections(connect: Any) -> None:
    admin, bob = _admin_with_bob(connect)
    admin.create_bucket("b", "Recorder")
    with pytest.raises(PermissionDenied):
        bob.view("b", "count")
    admin.grant("bob", "view", "b")
    assert bob.view("b", "count") == 0
    admin.revoke("bob", "view", "b")
    with pytest.raises(PermissionDenied):
        bob.view("b", "count")
    with pytest.raises(BadArgument, match="holds no grant"):
        admin.revoke("bob", "view", "b")


def test_grants_are_checked(connect: Any) -> None:
    admin = connect()
    admin.create_user("bob", "bob-secret")
    with pytest.raises(BadArgument, match="unknown permission"):
        admin.grant("bob", "sendd", "*")
    with pytest.raises(BadArgument, match="server-wide"):
        admin.grant("bob", "stats", "clicks.*")
    with pytest.raises(BadArgument, match="invalid pattern"):
        admin.grant("bob", "send", "clicks/*")
    with pytest.raises(UnknownUser):
        admin.grant("nobody", "send", "*")


def test_users_are_created_listed_and_deleted(connect: Any) -> None:
    admin = connect()
    admin.create_user("bob", "bob-secret")
    with pytest.raises(UserExists):
        admin.create_user("bob", "other-secret")
    for name, password in [("bad name", "pw-long"), ("x" * 65, "pw-long"), ("eve", ""),
                           ("eve", "eve"), ("eve", "x" * 1025)]:
        with pytest.raises(BadArgument):
            admin.create_user(name, password)
    names = [row["user"] for row in admin.users()]
    assert names == ["admin", "bob"]
    bob = connect(user="bob", password="bob-secret")
    assert bob.whoami()["user"] == "bob"
    admin.delete_user("bob")
    # Deleting a user ends their live connections' access at once.
    with pytest.raises(AuthRequired):
        bob.whoami()
    with pytest.raises(UnknownUser):
        admin.delete_user("bob")
    with pytest.raises(AuthFailed):
        connect(user="bob", password="bob-secret")


def test_passwords(connect: Any) -> None:
    admin, bob = _admin_with_bob(connect)
    bob.change_password("bob-secret", "bob-second")
    with pytest.raises(AuthFailed):
        bob.change_password("wrong", "bob-third")
    admin.set_password("bob", "set-by-admin")
    assert connect(user="bob", password="set-by-admin").whoami()["user"] == "bob"
    with pytest.raises(AuthFailed):
        connect(user="bob", password="bob-second")
    with pytest.raises(UnknownUser):
        admin.set_password("ghost", "whatever")


def test_managers_cannot_grant_or_take_what_they_do_not_hold(connect: Any) -> None:
    admin = connect()
    for name in ("granter", "manager", "carol"):
        admin.create_user(name, f"{name}-pw")
    admin.grant("granter", "grants.manage")
    admin.grant("granter", "view", "clicks.*")
    admin.grant("manager", "users.manage")
    admin.grant("carol", "send", "clicks.*")
    granter = connect(user="granter", password="granter-pw")
    manager = connect(user="manager", password="manager-pw")
    # A grant needs the permission it gives, on a pattern at least as wide.
    granter.grant("carol", "view", "clicks.eu.*")
    with pytest.raises(PermissionDenied):
        granter.grant("carol", "view", "*")
    with pytest.raises(PermissionDenied):
        granter.grant("granter", "*", "*")
    with pytest.raises(PermissionDenied):
        granter.revoke("carol", "send", "clicks.*")
    # A user manager cannot take over a user who holds more than they do: not even admin.
    with pytest.raises(PermissionDenied):
        manager.set_password("admin", "taken-over")
    with pytest.raises(PermissionDenied):
        manager.delete_user("carol")
    # ... nor revoke (or list) admin's tokens: one rule for every act on another user.
    admin.change_password("admin", "admin-pw-2")
    token = admin.create_token("admin's")
    with pytest.raises(PermissionDenied, match="revoke the tokens of"):
        manager.revoke_token(token["id"])
    with pytest.raises(PermissionDenied, match="list the tokens of"):
        manager.tokens(user="admin")
    assert [t["id"] for t in admin.tokens()] == [token["id"]]
    manager.create_user("dave", "dave-pw")
    manager.set_password("dave", "dave-new-pw")
    manager.delete_user("dave")
    entries = admin.audit(limit=50)
    denied = [e for e in entries if e["event"] == "permission_denied"]
    assert any(e["user"] == "manager" and "admin" in e["detail"] for e in denied)


def test_admin_can_revoke_its_own_permissions(connect: Any) -> None:
    admin = connect()
    admin.revoke("admin", "*", "*")
    with pytest.raises(PermissionDenied):
        admin.stats()
    assert admin.whoami()["permissions"] == []


def test_api_tokens(connect: Any, server: RunningServer, tmp_path: Path) -> None:
    admin, bob = _admin_with_bob(connect, ("view", "*"), ("create_token", "*"))
    # No token for an account still on the initial admin/admin password.
    with pytest.raises(PermissionDenied, match="initial password"):
        admin.create_token()
    created = bob.create_token("ingest")
    token = created["token"]
    assert token.startswith(f"bkt_{created['id']}_") and len(token) > 40
    assert bob.tokens() == [{k: v for k, v in created.items() if k != "token"}]
    producer = connect(user=None, password=None, token=token)
    assert producer.whoami()["user"] == "bob"
    assert producer.whoami()["token"] == created["id"]
    for wrong in (token[:-1] + ("A" if token[-1] != "A" else "B"), "bkt_999_" + "x" * 43,
                  "nonsense", "x" * 5000):
        with pytest.raises(AuthFailed, match="invalid or revoked token"):
            connect(user=None, password=None, token=wrong)
    bob.revoke_token(created["id"])
    with pytest.raises(AuthRequired):
        producer.whoami()
    with pytest.raises(AuthFailed):
        connect(user=None, password=None, token=token)
    assert bob.tokens() == []
    # Stored hashed: the secret is nowhere in the database file.
    database = server.args[server.args.index("bucketly.cli.daemon") + 1]
    with sqlite3.connect(database) as db:
        dump = "\n".join(db.iterdump())
    assert token.split("_", 2)[2] not in dump
    with pytest.raises(ValueError):
        bucketly.Client(server.host, server.port, user="bob", password="x", token=token,
                        connect=False)


def test_passwords_are_argon2id_hashes_with_explicit_parameters(
    client: Any, server: RunningServer
) -> None:
    client.create_user("bob", "bob-secret")
    database = server.args[server.args.index("bucketly.cli.daemon") + 1]
    with sqlite3.connect(database) as db:
        (stored,) = db.execute("SELECT password_hash FROM users WHERE name = 'bob'").fetchone()
    assert stored.startswith(
        f"$argon2id$v=19$m={ARGON2_MEMORY_KIB},t={ARGON2_TIME_COST},p={ARGON2_PARALLELISM}$"
    )
    assert "bob-secret" not in stored


def test_audit_trail_says_who_from_where_what_and_when_never_the_password(
    raw: Any, server: RunningServer
) -> None:
    admin = raw()
    admin.auth()
    admin.call(1, "create_user", user="bob", password="bob-secret")
    admin.call(2, "create_bucket", bucket="b", handler="Recorder")
    bob = raw()
    bob.auth("bob", "bob-secret")
    for i in range(3):
        assert bob.call(10 + i, "send", bucket="b", event=i).code == "permission_denied"
    other = raw()
    before = time.time()
    assert other.call(1, "auth", user="bob", password="guess-1-secret").code == "auth_failed"
    assert other.call(2, "auth", user="ghost", password="guess-2-secret").code == "auth_failed"
    entries = admin.call(3, "audit", limit=100).result
    by_event: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        by_event.setdefault(entry["event"], []).append(entry)
    (denied,) = by_event["permission_denied"]
    assert (denied["user"], denied["peer"], denied["count"]) == ("bob", "127.0.0.1", 3)
    assert "send" in denied["detail"] and "'b'" in denied["detail"]
    failed = {e["user"]: e for e in by_event["login_failed"]}
    assert set(failed) == {"bob", "ghost"}
    assert all(e["peer"] == "127.0.0.1" and e["at"] >= before - 1 for e in failed.values())
    assert by_event["user_created"][0]["user"] == "admin"
    assert entries == sorted(entries, key=lambda e: -e["id"])
    for secret in ("bob-secret", "guess-1-secret", "guess-2-secret"):
        assert secret not in repr(entries)
        assert not any(secret in line for line in server.logs)


def test_unknown_user_and_wrong_password_are_alike(tmp_path: Path) -> None:
    """The same error, after about the same time (the unknown user's password is hashed too)."""
    with run_server(
        handlers=TEST_HANDLERS, database=tmp_path / "db.dat",
        extra_args=["--auth-free-failures", "1000"],
    ) as server:
        admin = RawConnection(server.host, server.port)
        admin.auth()
        admin.call(1, "create_user", user="bob", password="bob-secret")
        admin.close()
        times: dict[str, list[float]] = {"bob": [], "ghost": []}
        replies = set()
        for i in range(12):
            for user in times:
                conn = RawConnection(server.host, server.port)
                start = time.perf_counter()
                reply = conn.call(10 + i, "auth", user=user, password=f"wrong-{i}")
                times[user].append(time.perf_counter() - start)
                replies.add((reply.code, reply.message))
                conn.close()
    assert replies == {("auth_failed", "unknown user or wrong password")}
    known, unknown = statistics.median(times["bob"]), statistics.median(times["ghost"])
    assert abs(known - unknown) < 0.35 * max(known, unknown), (known, unknown)


def test_throttle_windows_grow_and_never_lock_out_for_good() -> None:
    now = [1000.0]
    throttle = AuthThrottle(free_failures=3, max_delay=8.0, clock=lambda: now[0])
    keys = throttle.keys_for("bob", "10.0.0.1")
    assert keys == ("pair:bob@10.0.0.1", "user:bob", "peer:10.0.0.1")
    for _ in range(2):
        assert throttle.retry_after(*keys) == 0
        throttle.failed(*keys)
    assert throttle.retry_after(*keys) == 0  # the first failures cost nothing
    windows = []
    for _ in range(6):  # the third, the documented number, closes the keys
        throttle.failed(*keys)
        windows.append(throttle.retry_after(*keys))
        now[0] += windows[-1]
        assert throttle.retry_after(*keys) == 0  # open again once the window has passed
    assert windows == [AUTH_BASE_DELAY, 2.0, 4.0, 8.0, 8.0, 8.0]
    throttle.succeeded("bob", "10.0.0.1")  # a good login clears its pair and user, not address
    assert throttle.failures("pair:bob@10.0.0.1") == throttle.failures("user:bob") == 0
    assert throttle.failures("peer:10.0.0.1") == 8
    # ... and trusts the pair: bob is checked only against his own failures from there.
    assert throttle.keys_for("bob", "10.0.0.1") == ("pair:bob@10.0.0.1",)
    assert throttle.keys_for("bob", "10.0.0.2") == ("pair:bob@10.0.0.2", "user:bob",
                                                    "peer:10.0.0.2")
    now[0] += AUTH_TRUST_SECONDS + 1
    assert len(throttle.keys_for("bob", "10.0.0.1")) == 3  # trust lapses


def test_throttle_memory_is_bounded() -> None:
    from bucketly.server import throttle as module

    throttle = AuthThrottle()
    for i in range(module.AUTH_MAX_TRACKED + 500):
        throttle.failed(f"user:made-up-{i}")
    assert len(throttle) == module.AUTH_MAX_TRACKED


def test_peer_keys() -> None:
    assert peer_key("10.1.2.3") == "peer:10.1.2.3"
    assert peer_key("::ffff:10.1.2.3") == "peer:10.1.2.3"
    assert peer_key("2001:db8::1") == peer_key("2001:db8::ffff") == "peer:2001:db8::/64"


def test_failed_logins_are_throttled_then_the_right_password_works(tmp_path: Path) -> None:
    with run_server(
        handlers=TEST_HANDLERS, database=tmp_path / "db.dat",
        extra_args=["--auth-free-failures", "2", "--auth-max-delay", "1.5"],
    ) as server:
        conn = RawConnection(server.host, server.port)
        # Exactly --auth-free-failures failures, then the window.
        for i in range(2):
            assert conn.call(i, "auth", user="admin", password="wrong").code == "auth_failed"
        # The window is open now: even the right password is refused, without being checked.
        start = time.perf_counter()
        refused = conn.call(4, "auth", user="admin", password="admin")
        elapsed = time.perf_counter() - start
        assert refused.code == "too_many_attempts"
        assert 0 < refused.detail["retry_after"] <= 1.5
        assert elapsed < 1.0
        # So is another user from the same address (per peer), but not after the window.
        assert conn.call(5, "auth", user="ghost", password="x").code == "too_many_attempts"
        time.sleep(refused.detail["retry_after"] + 0.1)
        assert conn.call(6, "auth", user="admin", password="admin").result["user"] == "admin"
        conn.close()
        with bucketly.Client(server.host, server.port, connect=False) as client:
            assert isinstance(TooManyAttempts("x"), AuthFailed)
            client.connect()


def _local_non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.123", 9))  # no packet is sent
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_initial_admin_password_only_from_loopback_and_loud_warning(tmp_path: Path) -> None:
    address = _local_non_loopback_address()
    with run_server(
        handlers=TEST_HANDLERS, database=tmp_path / "db.dat", extra_args=["--hostname", "0.0.0.0"]
    ) as server:
        server.wait_for_log(r"NOT ENCRYPTED: listening on 0\.0\.0\.0 without TLS")
        local = RawConnection("127.0.0.1", server.port)
        assert local.call(1, "auth", user="admin", password="admin").result == {
            "user": "admin",
            "must_change_password": True,
        }
        local.call(2, "create_user", user="bob", password="bob-secret")
        if address is None:
            pytest.skip("no non-loopback address to connect from")
        remote = RawConnection(address, server.port)
        refused = remote.call(1, "auth", user="admin", password="admin")
        # The same reply as a wrong password: nothing confirms the password to a remote caller.
        assert isinstance(refused, ErrorReply) and refused.code == "auth_failed"
        assert refused.message == "unknown user or wrong password"
        assert remote.call(2, "auth", user="bob", password="bob-secret").result["user"] == "bob"
        local.call(3, "change_password", old_password="admin", new_password="n3w-admin-pw")
        assert remote.call(4, "auth", user="admin", password="n3w-admin-pw").result == {
            "user": "admin",
            "must_change_password": False,
        }
        local.close()
        remote.close()
