"""``bucketly``: the command-line client. One subcommand per op, and an interactive shell.

``main()`` is the console script. ``run(argv)`` runs one command line and returns its exit status
instead of exiting; the interactive shell calls it for every line. Every error is reported as one
line on stderr (``--verbose`` adds the traceback) and mapped to the exit status docs/cli.md
lists: the ``exit_code`` of the error class, 2 for usage errors, 130 for Ctrl-C.

Connection and output options are added to every command by ``BucketlyCommand`` (see
``bucketly.cli.base`` and ``bucketly.cli.invocation``); results are printed through
``bucketly.cli.output.Output``. The commands live by concern: ``sending`` (send),
``dumping`` (dump), ``watching`` (stats), ``admin`` (buckets, users, permissions, tokens); this
module is the root, the few commands of its own, and ``run()``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from typing import Any

import click

from .. import __version__
from ..errors import BucketlyError
from . import output as out
from .admin import bucket, grant, handlers, passwd, permissions, reload, revoke, tokens, user
from .base import (
    CONTEXT_SETTINGS,
    EXIT_CLI_BUG,
    BucketlyCommand,
    BucketlyGroup,
    OutputClosed,
    current_invocation,
)
from .dumping import dump
from .invocation import Invocation, remind_default_password
from .output import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_USAGE, CliError, to_json
from .sending import send
from .watching import stats

__all__ = ["OP_COMMANDS", "cli", "main", "run"]


#: The command for each op of ``bucketly.protocol.OPS`` (tests/test_cli_docs.py checks that
#: every op has one, and docs/cli.md lists them). ``hello`` and ``auth`` happen on connecting.
OP_COMMANDS: dict[str, str] = {
    "hello": "(none: the client checks the greeting the server sends first)",
    "auth": "(every command with a user, on connecting)",
    "ping": "ping",
    "send": "send",
    "view": "view",
    "dump": "dump",
    "merge": "(view and dump with --servers, for a handler-defined merge)",
    "create_bucket": "bucket create",
    "list_buckets": "bucket list",
    "bucket_info": "bucket info",
    "configure_bucket": "bucket configure",
    "delete_bucket": "bucket delete",
    "list_handlers": "handlers",
    "handlers_module": "handlers",  # with --module
    "reload": "reload",
    "whoami": "whoami",
    "change_password": "passwd",
    "stats": "stats",
    "create_user": "user add",
    "delete_user": "user delete",
    "list_users": "user list",
    "set_password": "user passwd",
    "grant": "grant",
    "revoke": "revoke",
    "permissions": "permissions",
    "create_token": "tokens create",
    "list_tokens": "tokens list",
    "revoke_token": "tokens revoke",
    "audit": "audit",
}


# -- the root ------------------------------------------------------------------------------------


@click.group(cls=BucketlyGroup, invoke_without_command=True, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="bucketly")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """The bucketly command-line client: send events, query views, manage a bucketlyd server.

    Run a COMMAND, or run 'bucketly' alone for an interactive shell with history and tab
    completion. Connection settings come from the options below, the BUCKETLY_* environment
    variables, and profiles in the config file, in that order. Results are tables on a terminal
    and exact JSON when piped ('bucketly bucket list | jq .'). See docs/cli.md.
    """
    invocation = ctx.ensure_object(Invocation)
    ctx.call_on_close(invocation.close)
    if ctx.invoked_subcommand is None and invocation.shell is None:
        _run_shell(invocation)


def _run_shell(invocation: Invocation) -> None:
    from .shell import Shell

    status = Shell(cli, run, invocation).run()
    if status:
        raise click.exceptions.Exit(status)


# -- the commands, in the order --help and docs/cli.md list them ---------------------------------


@click.command(cls=BucketlyCommand)
def ping() -> None:
    """Check that the server answers (and that you can log in, if a user is set)."""
    invocation = current_invocation()
    client = invocation.client()
    remind_default_password(client, invocation.output())
    started = time.perf_counter()
    reply = client.ping()
    elapsed = time.perf_counter() - started
    address = f"{client.host}:{client.port}"
    invocation.output().message(
        f"{reply} from {address} in {elapsed * 1000:.2f} ms",
        {"reply": reply, "server": address, "round_trip_ms": round(elapsed * 1000, 3)},
    )


def _parse_view_args(pairs: tuple[str, ...]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.UsageError(f"view arguments are KEY=VALUE, not {pair!r}")
        try:
            args[key] = json.loads(raw)
        except json.JSONDecodeError:
            args[key] = raw
    return args


@click.command(cls=BucketlyCommand)
@click.argument("bucket")
@click.argument("view")
@click.argument("args", nargs=-1, metavar="[KEY=VALUE]...")
def view(bucket: str, view: str, args: tuple[str, ...]) -> None:
    """Call the view VIEW of BUCKET and print its result.

    Arguments are KEY=VALUE; a VALUE that is valid JSON is passed as that JSON (n=5 is the
    number 5, flag=true a boolean, url='"/a"' the string "/a"), anything else as a string
    (url=/a). Example: bucketly view clicks top n=3
    """
    invocation = current_invocation()
    result = invocation.client().view(bucket, view, **_parse_view_args(args))
    invocation.output().result(result)


@click.command(cls=BucketlyCommand)
def whoami() -> None:
    """Show who you are logged in as, and your permissions."""
    invocation = current_invocation()
    invocation.output().result(invocation.client().whoami(), out.render_whoami)


@click.command(cls=BucketlyCommand)
@click.option("-n", "--limit", type=click.IntRange(min=1), metavar="N",
              help="Show the N most recent entries (default: the server's).")
def audit(limit: int | None) -> None:
    """Show the audit log: logins, and changes to users, permissions and buckets."""
    invocation = current_invocation()
    kwargs = {"limit": limit} if limit is not None else {}
    invocation.output().result(invocation.client().audit(**kwargs))


@click.command(cls=BucketlyCommand)
def shell() -> None:
    """Start the interactive shell (the same as 'bucketly' with no command).

    Every command works in it without the 'bucketly' prefix, over one connection. Tab completes
    commands, options, bucket, handler and view names; history is kept in
    ~/.local/state/bucketly/history (env BUCKETLY_HISTORY). 'help [COMMAND]' shows help, 'exit'
    or Ctrl-D leaves. With standard input not a terminal, it runs the commands it reads there.
    """
    invocation = current_invocation()
    if invocation.shell is not None:
        raise CliError("already in the shell", EXIT_USAGE)
    _run_shell(invocation)


for command in (ping, send, view, dump, bucket, handlers, reload, passwd, user, grant, revoke,
                permissions, tokens, whoami, audit, stats, shell):
    cli.add_command(command)


# -- running -------------------------------------------------------------------------------------


def run(argv: list[str] | None = None, *, obj: Invocation | None = None) -> int:
    """Run one ``bucketly`` command line; return its exit status (never raises for errors)."""
    invocation = obj if obj is not None else Invocation()
    try:
        result = cli.main(args=argv, prog_name="bucketly", standalone_mode=False, obj=invocation)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:  # click's form of Ctrl-C (or of EOF at a prompt)
        out.write_error("interrupted")
        return EXIT_INTERRUPTED
    except CliError as exc:
        out.write_error(exc.message)
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except BucketlyError as exc:
        out.write_error(out.describe_error(exc))
        if invocation.verbose:
            if exc.detail is not None:
                click.echo(f"detail: {to_json(exc.detail)}", err=True)
            traceback.print_exception(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("", err=True)
        out.write_error("interrupted")
        return EXIT_INTERRUPTED
    except (OutputClosed, BrokenPipeError):
        # Stop quietly, and keep Python from complaining again when it flushes stdout at exit.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        out.write_error(f"unexpected error in the bucketly CLI: {type(exc).__name__}: {exc} "
                        "(please report it; --verbose shows the traceback)")
        if invocation.verbose:
            traceback.print_exception(exc)
        return EXIT_CLI_BUG
    return result if isinstance(result, int) else 0


def main(argv: list[str] | None = None) -> None:
    """The ``bucketly`` console script."""
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
