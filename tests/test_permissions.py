"""Deny by default: every op against users with and without each permission, on a live server.

The op table (``bucketly.protocol.OPS``) is the one place where each op declares who may call it.
These tests fail when an op lacks a declaration, when a new op has no sample request here, or when
the server lets anybody do an op they hold no permission for.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bucketly.protocol import OPS, ErrorReply
from bucketly.protocol.ops import PERMISSIONS, Op, pattern_covers
from bucketly.testing import RunningServer, run_server

from .conftest import TEST_HANDLERS, RawConnection

BUCKET = "perm.b"
PATTERN = "perm.*"

#: A valid request for every op. An op missing here fails test_every_op_has_a_sample.
SAMPLES: dict[str, dict[str, Any]] = {
    "hello": {"protocol": 1},
    "auth": {"user": "nobody", "password": "not-the-password"},
    "ping": {},
    "send": {"bucket": BUCKET, "event": 1},
    "view": {"bucket": BUCKET, "view": "count"},
    "dump": {"bucket": BUCKET},
    "merge": {"bucket": BUCKET, "view": "count", "results": [1, 2]},
    "create_bucket": {"bucket": "perm.new", "handler": "Recorder"},
    "list_buckets": {},
    "bucket_info": {"bucket": BUCKET},
    "configure_bucket": {"bucket": BUCKET, "durable": False},
    "delete_bucket": {"bucket": "perm.absent"},
    "list_handlers": {},
    "handlers_module": {},
    "reload": {},
    "whoami": {},
    "change_password": {"old_password": "not-the-password", "new_password": "another-one"},
    "stats": {},
    "create_user": {"user": "made-here", "password": "made-here-pw"},
    "delete_user": {"user": "ghost"},
    "list_users": {},
    "set_password": {"user": "ghost", "password": "ghost-pw"},
    "grant": {"user": "ghost", "permission": "view", "pattern": PATTERN},
    "revoke": {"user": "ghost", "permission": "view", "pattern": PATTERN},
    "permissions": {"user": "nobody"},
    "create_token": {"name": "sample"},
    "list_tokens": {},
    "revoke_token": {"token_id": 999_999},
    "audit": {"limit": 5},
}


def _pattern(permission: str) -> str:
    return PATTERN if PERMISSIONS[permission].kind == "bucket" else "*"


def test_every_op_declares_who_may_call_it() -> None:
    for op in OPS.values():
        assert op.scope in ("none", "authenticated", "server", "bucket"), op.name
        if op.scope in ("server", "bucket"):
            assert op.permission in PERMISSIONS, op.name
            assert PERMISSIONS[op.permission].kind == op.scope, op.name
        else:
            assert op.permission is None, op.name
    # The declaration is required: an op without a scope cannot even be built.
    with pytest.raises(TypeError):
        Op("undeclared", "no scope")  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        Op("wrong", "a bucket op with a server permission", scope="bucket", permission="stats")
    with pytest.raises(ValueError):
        Op("unknown", "an unknown permission", scope="server", permission="everything")


def test_every_op_has_a_sample() -> None:
    assert sorted(set(OPS) - set(SAMPLES)) == [], "add a sample request for these ops"
    assert sorted(set(SAMPLES) - set(OPS)) == []


@pytest.fixture(scope="module")
def perm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server with a user per permission (holding only it) and per permission (all but it)."""
    tmp = tmp_path_factory.mktemp("perm")
    with run_server(
        handlers=TEST_HANDLERS,
        database=tmp / "db.dat",
        extra_args=["--auth-free-failures", "100000"],
    ) as server:
        admin = RawConnection(server.host, server.port)
        admin.auth()
        calls = [("create_bucket", {"bucket": BUCKET, "handler": "Recorder"})]
        calls.append(("create_user", {"user": "nobody", "password": "nobody-pw"}))
        for permission in PERMISSIONS:
            only, but = f"only-{permission}", f"but-{permission}"
            calls.append(("create_user", {"user": only, "password": only + "-pw"}))
            calls.append(("create_user", {"user": but, "password": but + "-pw"}))
            calls.append(
                ("grant", {"user": only, "permission": permission, "pattern": _pattern(permission)})
            )
            for other in PERMISSIONS:
                if other != permission:
                    grant = {"user": but, "permission": other, "pattern": _pattern(other)}
                    calls.append(("grant", grant))
        for i, (op, args) in enumerate(calls):
            reply = admin.call(i, op, **args)
            assert not isinstance(reply, ErrorReply), (op, args, reply)
        # Each test logs in several users: with tokens that costs microseconds, not a hash each.
        # A token needs create_token: each user holds it just long enough to make one (a token
        # not narrowed does what its user can, so it loses create_token with its user).
        users = ["nobody", *(f"{kind}-{p}" for p in PERMISSIONS for kind in ("only", "but"))]
        for i, user in enumerate(users):
            lent = {"user": user, "permission": "create_token", "pattern": "*"}
            held = user.startswith("only-create_token") or (
                user.startswith("but-") and user != "but-create_token"
            )
            if not held:
                assert admin.call(10_000 + i, "grant", **lent).result is None
            conn = RawConnection(server.host, server.port)
            conn.auth(user, user + "-pw")
            TOKENS[user] = conn.call(1, "create_token").result["token"]
            conn.close()
            if not held:
                assert admin.call(20_000 + i, "revoke", **lent).result is None
        admin.close()
        yield server


TOKENS: dict[str, str] = {}


def _login(server: RunningServer, user: str | None) -> RawConnection:
    conn = RawConnection(server.host, server.port)
    if user == "admin":
        conn.auth()
    elif user is not None:
        assert conn.call(999, "auth", token=TOKENS[user]).result["user"] == user
    return conn


def _code(conn: RawConnection, op: str) -> str | None:
    reply = conn.call(1, op, **SAMPLES[op])
    return reply.code if isinstance(reply, ErrorReply) else None


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_against_users_with_and_without_its_permission(
    perm_server: RunningServer, name: str
) -> None:
    op = OPS[name]
    anonymous = _login(perm_server, None)
    nobody = _login(perm_server, "nobody")
    root = _login(perm_server, "admin")
    try:
        if op.scope == "none":
            assert _code(anonymous, name) not in ("auth_required", "permission_denied")
            assert _code(nobody, name) != "permission_denied"
            return
        assert _code(anonymous, name) == "auth_required"
        if op.scope == "authenticated":
            assert _code(nobody, name) not in ("auth_required", "permission_denied")
            return
        assert op.permission is not None
        assert _code(nobody, name) == "permission_denied", "deny by default"
        # (admin still has its initial password here, and create_token issues no token to such
        # an account: the user holding only create_token shows that the permission suffices.)
        if name != "create_token":
            assert _code(root, name) != "permission_denied"
        only = _login(perm_server, f"only-{op.permission}")
        but = _login(perm_server, f"but-{op.permission}")
        try:
            assert _code(only, name) != "permission_denied", f"{op.permission} must suffice"
            assert _code(but, name) == "permission_denied", f"{name} needs {op.permission}"
        finally:
            only.close()
            but.close()
    finally:
        for conn in (anonymous, nobody, root):
            conn.close()


def test_ops_on_other_users_tokens_need_their_permission(perm_server: RunningServer) -> None:
    nobody = _login(perm_server, "nobody")
    manager = _login(perm_server, "only-users.manage")
    try:
        # nobody holds create_token just long enough to make a token (as in perm_server), so
        # that a user manager outranks it.
        root = _login(perm_server, "admin")
        lent = {"user": "nobody", "permission": "create_token", "pattern": "*"}
        assert root.call(1, "grant", **lent).result is None
        token = nobody.call(1, "create_token", name="mine").result
        assert root.call(2, "revoke", **lent).result is None
        root.close()
        assert token["id"] in [t["id"] for t in nobody.call(2, "list_tokens").result]
        other = _login(perm_server, "only-send")
        try:
            assert other.call(3, "list_tokens", user="nobody").code == "permission_denied"
            assert other.call(4, "revoke_token", token_id=token["id"]).code == "permission_denied"
        finally:
            other.close()
        listed = manager.call(5, "list_tokens", user="nobody").result
        assert token["id"] in [t["id"] for t in listed]
        assert manager.call(6, "revoke_token", token_id=token["id"]).result is None
    finally:
        nobody.close()
        manager.close()


def test_pattern_covers_is_conservative() -> None:
    assert pattern_covers("*", "anything.*")
    assert pattern_covers("clicks.*", "clicks.*")
    assert pattern_covers("clicks.*", "clicks.eu.*")
    assert pattern_covers("clicks.*", "clicks.[ab]")
    assert not pattern_covers("clicks.*", "*")
    assert not pattern_covers("clicks.*", "clicks")
    assert not pattern_covers("clicks.?", "clicks.*")  # "?" is one character, "*" any number
    assert not pattern_covers("c[a]*", "cb.x")
