"""One run of a ``bucketly`` command: its connection and output settings, and its client.

Connection and output options (``--host``, ``--json`` ...) are accepted both before and after the
subcommand (``bucketly --host h ping`` and ``bucketly ping --host h``). They are ``CommonOption``s:
not passed to the command functions, but recorded on the ``Invocation`` (the click context's
``obj``), the later one winning. A command asks the invocation for ``client()`` and ``output()``.

In the interactive shell every line is a new ``Invocation`` that shares the shell's connection,
unless the line itself gives connection options.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import ssl
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import click
from click.core import ParameterSource

from ..client import Client
from ..errors import BucketlyError
from .config import ENV_VARS, Settings, SettingsError, resolve_settings
from .output import EXIT_USAGE, CliError, Output

__all__ = [
    "CONNECTION_KEYS",
    "CommonOption",
    "Invocation",
    "common_params",
    "main_thread_signals",
    "prompt_secret",
]

#: Exit status when a password is needed and there is no way to ask for one.
EXIT_NO_PASSWORD = 3

#: Options that choose the connection (as opposed to how output looks).
CONNECTION_KEYS = ("host", "port", "user", "password", "token", "tls", "tls_ca", "tls_cert",
                   "tls_key", "timeout", "servers", "profile")


class CommonOption(click.Option):
    """An option every command accepts; shown once in ``bucketly --help``, listed elsewhere."""


#: Prefix of the common options' parameter names, so that they never clash with a command's
#: own arguments (``passwd USER`` and ``--user``).
_PREFIX = "common_"


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    assert param.name is not None
    if ctx.get_parameter_source(param.name) is ParameterSource.COMMANDLINE:
        ctx.ensure_object(Invocation).flags[param.name.removeprefix(_PREFIX)] = value
    return value


_PATH = click.Path(dir_okay=False)

#: (declarations, help, extra click arguments) of each common option, in --help order.
_COMMON: list[tuple[list[str], str, dict[str, Any]]] = [
    (["--host"], f"Server address [env {ENV_VARS['host']}; default 127.0.0.1].",
     {"metavar": "HOST"}),
    (["--port"], f"Server port [env {ENV_VARS['port']}; default 8484].",
     {"type": int, "metavar": "PORT"}),
    (["-u", "--user"], f"User to log in as [env {ENV_VARS['user']}]. Without one (or an API "
     f"token in {ENV_VARS['token']}), only 'ping' works.", {"metavar": "NAME"}),
    (["--password"], f"Password; insecure: it lands in shell history and 'ps'. Prefer "
     f"{ENV_VARS['password']}, a profile's password_env, or the prompt you get on a terminal.",
     {"metavar": "TEXT"}),
    (["--profile"], "Profile of the config file to use [env BUCKETLY_PROFILE; file: env "
     "BUCKETLY_CONFIG, default ~/.config/bucketly/config.toml].", {"metavar": "NAME"}),
    (["--tls/--no-tls"], f"Connect with TLS [env {ENV_VARS['tls']}=1].", {"default": None}),
    (["--tls-ca"], f"CA bundle to verify the server with [env {ENV_VARS['tls_ca']}].",
     {"type": _PATH, "metavar": "FILE"}),
    (["--tls-cert"], f"Client certificate [env {ENV_VARS['tls_cert']}].",
     {"type": _PATH, "metavar": "FILE"}),
    (["--tls-key"], f"Key of the client certificate [env {ENV_VARS['tls_key']}].",
     {"type": _PATH, "metavar": "FILE"}),
    (["--timeout"], f"Seconds to wait to connect or for an answer [env {ENV_VARS['timeout']}; "
     "default 30].", {"type": float, "metavar": "SECONDS"}),
    (["--servers"], "Several servers, instead of --host and --port: buckets are routed among "
     f"them [env {ENV_VARS['servers']}; profile key servers]. See docs/scaling.md.",
     {"metavar": "HOST:PORT,..."}),
    (["--json/--table"], "Print exact JSON, or tables for people. Default: tables on a "
     "terminal, JSON when stdout is a pipe or file.", {"default": None}),
    (["-v", "--verbose"], "Show details of errors (their traceback and server detail).",
     {"is_flag": True, "default": None}),
]


def common_params() -> list[click.Parameter]:
    """Fresh connection and output options for one command (they are not passed to it)."""
    params: list[click.Parameter] = []
    for decls, help_text, extra in _COMMON:
        name = _PREFIX + decls[-1].split("/")[0].lstrip("-").replace("-", "_")
        params.append(CommonOption([*decls, name], help=help_text, expose_value=False,
                                   callback=_remember, **extra))
    return params


def common_option_names() -> str:
    """``--host, --port, ...``: how a subcommand's help mentions the common options."""
    names = []
    for decls, _, _ in _COMMON:
        names.append("/".join(d for d in decls))
    return ", ".join(names)


class ShellSession(Protocol):
    """What a command line run in the interactive shell uses of the shell (``cli.shell.Shell``).

    Declared here, not imported, so that the shell depends on this module and not the reverse.
    """

    flags: dict[str, Any]
    verbose: bool
    json_mode: bool | None
    settings: Settings

    def client(self) -> Client: ...

    def disconnect(self) -> None: ...


class Invocation:
    """The state of one command run: flags given, and the client it opened (closed at the end).

    ``shell`` is the interactive shell this line runs in, if any: its connection is reused.
    """

    def __init__(
        self, shell: ShellSession | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        self.flags: dict[str, Any] = {}
        self.shell = shell
        self.env: Mapping[str, str] = os.environ if env is None else env
        self._client: Client | None = None
        self._output: Output | None = None
        self._settings: Settings | None = None

    @property
    def verbose(self) -> bool:
        if self.flags.get("verbose") is not None:
            return bool(self.flags["verbose"])
        return self.shell.verbose if self.shell is not None else False

    def output(self) -> Output:
        if self._output is None:
            json_mode = self.flags.get("json")
            if json_mode is None and self.shell is not None:
                json_mode = self.shell.json_mode
            self._output = Output(json_mode, self.verbose)
        return self._output

    def connection_flags(self) -> dict[str, Any]:
        """Connection flags given: on this line, over those the shell was started with."""
        flags = dict(self.shell.flags) if self.shell is not None else {}
        flags.update(self.flags)
        return {k: v for k, v in flags.items() if k in CONNECTION_KEYS}

    def settings(self) -> Settings:
        flags = self.connection_flags()
        profile = flags.pop("profile", None)
        try:
            return resolve_settings(flags, self.env, profile=profile)
        except SettingsError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None

    def client(self) -> Client:
        """The connected, authenticated client for this command (the shell's, in the shell)."""
        if self._client is not None:
            return self._client
        if self.shell is not None and not any(k in self.flags for k in CONNECTION_KEYS):
            return self.shell.client()
        self._settings = self.settings()
        self._client = connect(self._settings, self.output())
        return self._client

    def login_password(self) -> str | None:
        """The password the client logged in with (from wherever it came, prompt included)."""
        if self._client is None and self.shell is not None:
            return self.shell.settings.password
        return self._settings.password if self._settings is not None else None

    def password_changed(self, password: str) -> None:
        """Remember a new own password, so that reconnecting (in the shell) still works."""
        settings = self.shell.settings if self._client is None and self.shell else self._settings
        if settings is not None:
            settings.password = password
        if self._client is None and self.shell is not None:
            self.shell.disconnect()  # its client would reconnect with the old password

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            # A command that needs its sends acknowledged flushed them already.
            with contextlib.suppress(BucketlyError):
                client.close()


def connect(settings: Settings, output: Output, *, remind: bool = False) -> Client:
    """Open a client for ``settings``: ask for the password if needed, set up TLS, log in.

    ``remind``: tell the user (on a terminal) if they still have the default password.
    """
    if not settings.token and settings.user and settings.password is None:
        settings.password = prompt_secret(
            f"Password for {settings.user}@{settings.address}: ",
            missing=f"no password for user {settings.user!r}: set {ENV_VARS['password']} (or a "
                    "profile's password_env), or run on a terminal to be asked for it",
        )
    tls = _tls_context(settings) if settings.uses_tls else None
    where: dict[str, Any] = (
        {"servers": settings.servers} if settings.servers
        else {"host": settings.host, "port": settings.port}
    )
    if settings.token:  # the token names the user: a user and password would be ignored
        client = Client(**where, token=settings.token, tls=tls, timeout=settings.timeout)
    else:
        client = Client(**where, user=settings.user, password=settings.password, tls=tls,
                        timeout=settings.timeout)
    if remind:
        remind_default_password(client, output)
    return client


def remind_default_password(client: Client, output: Output) -> None:
    if client.session and client.session.get("must_change_password"):
        output.note(f"user {client.user!r} still has its default password: change it with "
                    "'bucketly passwd'")


def _tls_context(settings: Settings) -> ssl.SSLContext:
    if settings.tls_key and not settings.tls_cert:
        raise CliError("--tls-key needs --tls-cert", EXIT_USAGE)
    def expand(path: str | None) -> str | None:
        return os.path.expanduser(path) if path else None

    try:
        context = ssl.create_default_context(cafile=expand(settings.tls_ca))
        if settings.tls_cert:
            context.load_cert_chain(os.path.expanduser(settings.tls_cert),
                                    expand(settings.tls_key))
    except (OSError, ssl.SSLError) as exc:
        raise CliError(f"cannot set up TLS: {exc}", EXIT_USAGE) from None
    return context


@contextlib.contextmanager
def main_thread_signals() -> Iterator[None]:
    """Block SIGINT while threads are started inside, so that they never receive it.

    A thread inherits the signal mask of the thread that starts it. Ctrl-C must reach the main
    thread: only there does it interrupt a blocked ``read()`` or readline's wait for a key. A
    helper thread that catches it (the client's linger thread, rich's refresh thread) leaves
    the main thread blocked, and the Ctrl-C seems lost.
    """
    if not hasattr(signal, "pthread_sigmask") or (
            threading.current_thread() is not threading.main_thread()):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def can_prompt() -> bool:
    """Whether a person can be asked for a secret: stdin is a terminal, or (when stdin is a
    pipe, as in ``cat events | bucketly send b``) stderr is and /dev/tty opens."""
    if sys.stdin is not None and sys.stdin.isatty():
        return True
    if sys.stderr is None or not sys.stderr.isatty():
        return False
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        return False
    return True


def prompt_secret(prompt: str, *, missing: str, confirm: bool = False) -> str:
    """Ask for a secret without echo; raise ``CliError`` with ``missing`` if nobody can answer."""
    if not can_prompt():
        raise CliError(missing, EXIT_NO_PASSWORD)
    try:
        secret = getpass.getpass(prompt)
        if confirm and getpass.getpass("Again, to confirm: ") != secret:
            raise CliError("the two passwords differ; nothing was changed", EXIT_USAGE)
    except EOFError:
        raise CliError("no password given", EXIT_NO_PASSWORD) from None
    return secret


def read_secret_from_stdin(what: str) -> str:
    """The first line of stdin, for ``--stdin`` options (``echo pw | bucketly passwd --stdin``)."""
    line = sys.stdin.readline()
    secret = line.rstrip("\r\n")
    if not secret:
        raise CliError(f"--stdin: no {what} on standard input", EXIT_USAGE)
    return secret

