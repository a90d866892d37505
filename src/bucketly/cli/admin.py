"""The commands that manage a server: buckets, handlers, users, permissions and API tokens."""

from __future__ import annotations

import textwrap
from typing import Any

import click
from rich.text import Text

from ..errors import AuthRequired
from ..protocol.ops import PERSISTENCE_LEVELS
from . import output as out
from .base import (
    HELP_WIDTH,
    YES,
    BucketlyCommand,
    BucketlyGroup,
    confirm,
    current_invocation,
    parse_json,
)
from .invocation import prompt_secret, read_secret_from_stdin
from .output import EXIT_USAGE, CliError

__all__ = [
    "bucket", "grant", "handlers", "passwd", "permissions", "reload", "revoke", "tokens", "user",
]


@click.group(cls=BucketlyGroup)
def bucket() -> None:
    """Create, list, describe and delete buckets."""


@bucket.command("create")
@click.argument("bucket")
@click.argument("handler")
@click.option("--config", "config_json", metavar="JSON",
              help="""The handler's configuration, a JSON object: --config '{"key": "url"}'.""")
@click.option("--persistence", type=click.Choice(PERSISTENCE_LEVELS),
              help="What survives the server: memory (the default), snapshot (the state as of "
                   "its last snapshot) or durable (every acknowledged event).")
@click.option("--durable", is_flag=True, help="The same as --persistence durable.")
@click.option("--snapshot-interval", type=click.FloatRange(1, 86400), metavar="SECONDS",
              help="Seconds between the snapshots of a snapshot-level bucket (default 60).")
@click.option("--partition-key", metavar="FIELD",
              help="Partition the bucket by this event field: created on every server of "
                   "--servers, each event sent to the server owning its key (docs/scaling.md).")
def bucket_create(bucket: str, handler: str, config_json: str | None, persistence: str | None,
                  durable: bool, snapshot_interval: float | None,
                  partition_key: str | None) -> None:
    """Create BUCKET, aggregating with HANDLER (a class of the server's handlers module).

    See the handlers with 'bucketly handlers', and docs/durability.md for the persistence
    levels.
    """
    config = None
    if config_json is not None:
        config = parse_json(config_json, "--config")
        if not isinstance(config, dict):
            raise CliError("--config must be a JSON object, like '{\"key\": \"url\"}'", EXIT_USAGE)
    invocation = current_invocation()
    info = invocation.client().create_bucket(
        bucket, handler, config, durable, persistence=persistence,
        snapshot_interval=snapshot_interval, partition_key=partition_key,
    )
    invocation.output().message(
        f"created bucket {bucket} (handler {handler}, {info.get('persistence', 'memory')})", info
    )


@bucket.command("list")
def bucket_list() -> None:
    """List the buckets you hold any permission on."""
    invocation = current_invocation()
    invocation.output().result(invocation.client().buckets(), out.render_buckets)


@bucket.command("info")
@click.argument("bucket")
def bucket_info(bucket: str) -> None:
    """Describe BUCKET: handler, configuration, events, and its scheduled jobs."""
    invocation = current_invocation()
    invocation.output().result(invocation.client().bucket_info(bucket), out.render_bucket_info)


@bucket.command("configure")
@click.argument("bucket")
@click.option("--persistence", type=click.Choice(PERSISTENCE_LEVELS),
              help="Move it to memory, snapshot or durable (docs/durability.md).")
@click.option("--durable/--not-durable", default=None,
              help="The same as --persistence durable / --persistence memory.")
@click.option("--snapshot-interval", type=click.FloatRange(1, 86400), metavar="SECONDS",
              help="Seconds between its snapshots at the snapshot level.")
def bucket_configure(bucket: str, persistence: str | None, durable: bool | None,
                     snapshot_interval: float | None) -> None:
    """Change the settings of BUCKET."""
    if durable is None and persistence is None and snapshot_interval is None:
        raise click.UsageError(
            "nothing to change: give --persistence, --durable, --not-durable or "
            "--snapshot-interval"
        )
    invocation = current_invocation()
    info = invocation.client().configure_bucket(
        bucket, durable=durable, persistence=persistence, snapshot_interval=snapshot_interval
    )
    invocation.output().message(
        f"bucket {bucket} is kept at persistence level {info.get('persistence')}", info
    )


@bucket.command("delete")
@click.argument("bucket")
@YES
def bucket_delete(bucket: str, yes: bool) -> None:
    """Delete BUCKET: its definition and all its state. There is no undo."""
    confirm(f"Delete bucket {bucket!r} and all its state?", yes)
    invocation = current_invocation()
    invocation.client().delete_bucket(bucket)
    invocation.output().message(f"deleted bucket {bucket}", {"bucket": bucket, "deleted": True})


@click.command(cls=BucketlyCommand)
@click.option("--module", "module", is_flag=True,
              help="Show which version of the handlers module is loaded instead: its file, "
                   "SHA-256 and modification time (needs the stats permission).")
def handlers(module: bool) -> None:
    """List the handlers the server's handlers module defines, with their views and jobs."""
    invocation = current_invocation()
    if module:
        invocation.output().result(invocation.client().handlers_module(), out.render_module)
        return
    invocation.output().result(invocation.client().handlers(), out.render_handlers)


@click.command(cls=BucketlyCommand)
@click.option("--force", is_flag=True,
              help="Drop the state of buckets whose class the new module no longer defines "
                   "(they become unavailable), instead of refusing the reload.")
def reload(force: bool) -> None:
    """Reload the server's handlers module from its file, keeping every bucket's state.

    All or nothing: if the new module does not import, lacks a bucket's class, or a bucket's
    state cannot be carried into its new class, nothing changes and the error says which file,
    line and bucket. SIGHUP to bucketlyd does the same.
    """
    invocation = current_invocation()
    invocation.output().result(invocation.client().reload(force=force), out.render_reload)


# -- users and permissions -----------------------------------------------------------------------


def _new_password(from_stdin: bool, whose: str) -> str:
    if from_stdin:
        return read_secret_from_stdin("password")
    return prompt_secret(
        f"New password for {whose}: ", confirm=True,
        missing="no terminal to ask for the new password on: use --stdin and write it to "
                "standard input",
    )


_STDIN = click.option("--stdin", "from_stdin", is_flag=True,
                      help="Read the new password from the first line of standard input "
                           "instead of asking for it.")


@click.command(cls=BucketlyCommand)
@click.argument("user", required=False)
@_STDIN
def passwd(user: str | None, from_stdin: bool) -> None:
    """Change your own password, or (with USER, as an administrator) another user's."""
    invocation = current_invocation()
    client = invocation.client()
    own = user is None or user == client.user
    if own:
        if client.user is None:
            raise CliError(
                "not logged in: give the user with --user or BUCKETLY_USER", AuthRequired.exit_code
            )
        password = _new_password(from_stdin, client.user)
        client.change_password(invocation.login_password() or "", password)
        invocation.password_changed(password)
        invocation.output().message(f"changed the password of {client.user}",
                                    {"user": client.user, "changed": True})
        return
    assert user is not None
    password = _new_password(from_stdin, user)
    invocation.client().set_password(user, password)
    invocation.output().message(f"changed the password of {user}", {"user": user,
                                                                   "changed": True})


@click.group(cls=BucketlyGroup)
def user() -> None:
    """Manage users (as an administrator)."""


@user.command("add")
@click.argument("user")
@_STDIN
def user_add(user: str, from_stdin: bool) -> None:
    """Create USER, asking for their password. Grant them permissions with 'bucketly grant'."""
    invocation = current_invocation()
    password = _new_password(from_stdin, user)
    invocation.client().create_user(user, password)
    invocation.output().message(f"created user {user}", {"user": user, "created": True})


@user.command("delete")
@click.argument("user")
@YES
def user_delete(user: str, yes: bool) -> None:
    """Delete USER and their permissions and tokens."""
    confirm(f"Delete user {user!r}?", yes)
    invocation = current_invocation()
    invocation.client().delete_user(user)
    invocation.output().message(f"deleted user {user}", {"user": user, "deleted": True})


@user.command("list")
def user_list() -> None:
    """List the users."""
    invocation = current_invocation()
    invocation.output().result(invocation.client().users())


user.add_command(passwd)


def _permissions_epilog() -> str | None:
    """The permissions the protocol defines, for 'grant --help' (from the one list of them)."""
    from ..protocol import ops

    permissions = getattr(ops, "PERMISSIONS", None)
    if not permissions:
        return None
    width = max(len(name) for name in permissions) + 2
    lines = ["\b", "Permissions (* is all of them):"]
    for name, permission in permissions.items():
        scope = "bucket" if getattr(permission, "kind", "") == "bucket" else "server"
        text = textwrap.wrap(f"{scope}: {getattr(permission, 'doc', '')}",
                             HELP_WIDTH - 6 - width)
        lines.append(f"  {name:<{width}}{text[0]}")
        lines += [" " * (width + 2) + more for more in text[1:]]
    return "\n".join(lines)


@click.command(cls=BucketlyCommand, epilog=_permissions_epilog())
@click.argument("user")
@click.argument("permission")
@click.argument("pattern", default="*")
def grant(user: str, permission: str, pattern: str) -> None:
    """Grant USER a PERMISSION on the buckets matching PATTERN (a glob; default '*': all).

    Server-wide permissions take the PATTERN '*' only. Example: bucketly grant alice view
    'clicks.*'
    """
    invocation = current_invocation()
    invocation.client().grant(user, permission, pattern)
    invocation.output().message(
        f"granted {permission} on {pattern} to {user}",
        {"user": user, "permission": permission, "pattern": pattern, "granted": True},
    )


@click.command(cls=BucketlyCommand)
@click.argument("user")
@click.argument("permission")
@click.argument("pattern", default="*")
def revoke(user: str, permission: str, pattern: str) -> None:
    """Revoke a PERMISSION on PATTERN (default '*') that USER was granted."""
    invocation = current_invocation()
    invocation.client().revoke(user, permission, pattern)
    invocation.output().message(
        f"revoked {permission} on {pattern} from {user}",
        {"user": user, "permission": permission, "pattern": pattern, "revoked": True},
    )


@click.command(cls=BucketlyCommand)
@click.argument("user", required=False)
def permissions(user: str | None) -> None:
    """List the permissions of USER (default: yours)."""
    invocation = current_invocation()
    if user is None:
        result = invocation.client().whoami().get("permissions", [])
    else:
        result = invocation.client().permissions(user)
    invocation.output().result(result, out.render_permissions)


@click.group(cls=BucketlyGroup, invoke_without_command=True)
@click.pass_context
def tokens(ctx: click.Context) -> None:
    """Manage your API tokens; alone, the same as 'tokens list'."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(tokens_list)


@tokens.command("create")
@click.option("--name", help="A name to recognise the token by.")
@click.option("--grant", "grants", multiple=True, metavar="PERMISSION[:PATTERN]",
              help="Narrow the token to this one of your grants (pattern default '*'); "
              "repeat for more. By default the token can do all that you can.")
@click.option("--expires", type=click.IntRange(min=1), metavar="SECONDS",
              help="Seconds until the token stops working. By default it never does.")
def tokens_create(name: str | None, grants: tuple[str, ...], expires: int | None) -> None:
    """Create a token, and print it: it is shown only this once.

    Needs the create_token permission. Changing your password revokes all your tokens.
    """
    invocation = current_invocation()
    narrowed = []
    for grant in grants:
        permission, _, pattern = grant.partition(":")
        narrowed.append((permission, pattern or "*"))
    result = invocation.client().create_token(
        name=name, grants=narrowed or None, expires_in=expires
    )
    output = invocation.output()
    if output.json:
        output.emit_json(result)
        return
    output.console.print(Text(str(result.get("token")), style="bold"))
    output.note(f"token id {result.get('id')}: store the token now, it is not shown again")


@tokens.command("list")
@click.option("--owner", metavar="USER",
              help="List the tokens of another user (as an administrator).")
def tokens_list(owner: str | None = None) -> None:
    """List your tokens (their ids and names, never the tokens)."""
    invocation = current_invocation()
    kwargs = {"user": owner} if owner is not None else {}
    invocation.output().result(invocation.client().tokens(**kwargs),
                               out.render_tokens)


@tokens.command("revoke")
@click.argument("token_id", metavar="ID")
def tokens_revoke(token_id: str) -> None:
    """Revoke the token ID (as 'tokens list' shows it)."""
    invocation = current_invocation()
    # Not a number: passed on as it is, for the server to refuse (bad_argument, exit 2).
    ident: Any = int(token_id) if token_id.isdigit() else token_id
    invocation.client().revoke_token(ident)
    invocation.output().message(f"revoked token {token_id}", {"id": ident, "revoked": True})
