"""``bucketlyd``: flags and environment variables onto ``ServerConfig``, then ``Server.run()``."""

from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Any

import click

from ..errors import BucketlyError
from ..server import Server, ServerConfig
from ..server.config import DEFAULT_DATABASE, ENV_PREFIX, options
from ..server.shards import run_shards

#: Exit status when the address cannot be listened on (in use, not ours): as any other failure
#: to start (docs/configuration.md, "Exit status").
EXIT_CANNOT_LISTEN = BucketlyError.exit_code

__all__ = ["build_command", "main"]

_TYPES: dict[Any, Any] = {int: int, float: float, str: str, "int": int, "float": float, "str": str}


def _env_name(field: dataclasses.Field[Any]) -> str:
    return ENV_PREFIX + field.name.upper()


def build_command() -> click.Command:
    """The click command, built from the fields of ``ServerConfig`` (one source of truth)."""
    params: list[click.Parameter] = []
    for field in options():
        meta = field.metadata
        if meta.get("positional"):
            params.append(
                click.Argument(
                    [field.name],
                    required=False,
                    default=field.default,
                    envvar=_env_name(field),
                    type=click.Path(dir_okay=False),
                )
            )
            continue
        dashed = "--" + field.name.replace("_", "-")
        if field.type == "bool":
            params.append(
                click.Option(
                    [dashed, field.name],
                    is_flag=True,
                    default=field.default,
                    envvar=_env_name(field),
                    show_envvar=True,
                    help=meta["help"],
                )
            )
            continue
        names = [dashed]
        if field.name == "bucket_handlers":
            names.insert(0, "--bucket_handlers")  # the spelling the README shows
        kind: Any = _TYPES.get(field.type, str)
        if "choices" in meta:
            kind = click.Choice(meta["choices"], case_sensitive=False)
        params.append(
            click.Option(
                [*names, field.name],
                default=field.default,
                type=kind,
                envvar=_env_name(field),
                show_default=True,
                show_envvar=True,
                help=meta["help"],
            )
        )

    def run(**values: Any) -> None:
        config = ServerConfig(**values)
        logging.basicConfig(
            level=config.log_level.upper(),
            format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        if config.shards != 1:
            try:
                sys.exit(run_shards(config))
            except BucketlyError as exc:
                logging.getLogger("bucketly").error("%s", exc)
                sys.exit(exc.exit_code)
        try:
            Server(config).run()
        except BucketlyError as exc:
            logging.getLogger("bucketly").error("%s", exc)
            sys.exit(exc.exit_code)
        except OSError as exc:
            logging.getLogger("bucketly").error(
                "cannot listen on %s:%s: %s", config.hostname, config.port, exc.strerror or exc
            )
            sys.exit(EXIT_CANNOT_LISTEN)

    return click.Command(
        "bucketlyd",
        callback=run,
        params=params,
        help=(
            "Run the bucketly daemon on the database file DATABASE "
            f"(default: ./{DEFAULT_DATABASE}, created if missing).\n\n"
            "Clients send events to buckets over TCP; each bucket aggregates them in memory "
            "with a handler class from the handlers module. Every option can also be set in "
            f"the environment as {ENV_PREFIX}<OPTION> (e.g. {ENV_PREFIX}PORT=8485).\n\n"
            "On the first start with a new database file, a user 'admin' with password 'admin' "
            "is created: change it with 'bucketly passwd'."
        ),
        context_settings={
            "max_content_width": 100,
            "terminal_width": 100,
            "help_option_names": ["-h", "--help"],
        },
    )


def main(argv: list[str] | None = None) -> None:
    build_command().main(args=argv, prog_name="bucketlyd")


if __name__ == "__main__":
    main()
