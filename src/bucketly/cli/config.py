"""Where the ``bucketly`` client gets its connection settings: flags, environment, profiles.

Precedence, highest first: a flag given on the command line (a subcommand's over the group's),
then the environment (``BUCKETLY_HOST`` ...), then the selected profile of the config file, then
the defaults. Pure functions of their inputs: nothing here touches the network or a terminal, so
tests call ``resolve_settings`` directly.

The config file is TOML (default ``$XDG_CONFIG_HOME/bucketly/config.toml``, or the path in
``BUCKETLY_CONFIG``)::

    default_profile = "local"

    [profiles.local]
    host = "127.0.0.1"
    port = 8484
    user = "admin"
    password_env = "BUCKETLY_LOCAL_PASSWORD"   # the name of a variable, never the password

    [profiles.sharded]                          # several servers: buckets routed among them
    servers = ["127.0.0.1:8484", "127.0.0.1:8485"]
    user = "admin"

A profile holds no secret: ``password_env`` (``token_env``) names the environment variable that
holds the password (an API token).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..client import DEFAULT_HOST, DEFAULT_PORT
from ..client.common import DEFAULT_TIMEOUT

__all__ = [
    "ENV_CONFIG",
    "ENV_PROFILE",
    "ENV_VARS",
    "PROFILE_KEYS",
    "Settings",
    "SettingsError",
    "config_path",
    "history_path",
    "load_profiles",
    "resolve_settings",
]

ENV_CONFIG = "BUCKETLY_CONFIG"
ENV_PROFILE = "BUCKETLY_PROFILE"
ENV_HISTORY = "BUCKETLY_HISTORY"

#: Setting -> the environment variable that sets it.
ENV_VARS: dict[str, str] = {
    "host": "BUCKETLY_HOST",
    "port": "BUCKETLY_PORT",
    "user": "BUCKETLY_USER",
    "password": "BUCKETLY_PASSWORD",
    "token": "BUCKETLY_TOKEN",
    "tls": "BUCKETLY_TLS",
    "tls_ca": "BUCKETLY_TLS_CA",
    "tls_cert": "BUCKETLY_TLS_CERT",
    "tls_key": "BUCKETLY_TLS_KEY",
    "timeout": "BUCKETLY_TIMEOUT",
    "servers": "BUCKETLY_SERVERS",
}

#: Keys a ``[profiles.NAME]`` table may hold, with what each must be.
PROFILE_KEYS: dict[str, str] = {
    "host": "a string",
    "port": "an integer",
    "user": "a string",
    "password_env": "a string: the name of the environment variable holding the password",
    "token_env": "a string: the name of the environment variable holding an API token",
    "tls": "a boolean",
    "tls_ca": "a string: the path of a CA bundle",
    "tls_cert": "a string: the path of a client certificate",
    "tls_key": "a string: the path of the client certificate's key",
    "timeout": "a number of seconds",
    "servers": 'an array of "host:port" strings: route among these servers (docs/scaling.md)',
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class SettingsError(Exception):
    """A setting is invalid: a bad value, an unknown profile, a broken config file."""


@dataclass
class Settings:
    """Everything needed to open a connection, and where each value came from."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    #: An API token: logs in instead of user and password.
    token: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    #: Several servers (``host:port``): a routing client over them, instead of host and port.
    servers: list[str] | None = None
    profile: str | None = None
    #: setting -> "flag", "env BUCKETLY_HOST", "profile NAME" or "default".
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def address(self) -> str:
        return ",".join(self.servers) if self.servers else f"{self.host}:{self.port}"

    @property
    def uses_tls(self) -> bool:
        return self.tls or any((self.tls_ca, self.tls_cert, self.tls_key))

    def public(self) -> dict[str, Any]:
        """The settings with the password hidden, for display."""
        values = dataclasses.asdict(self)
        values.pop("sources")
        values["password"] = "(set)" if self.password else None
        values["token"] = "(set)" if self.token else None
        return values


def config_path(env: Mapping[str, str]) -> Path:
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")) / ".config")
    return Path(base).expanduser() / "bucketly" / "config.toml"


def history_path(env: Mapping[str, str]) -> Path:
    """Where the interactive shell keeps its history (``BUCKETLY_HISTORY`` overrides)."""
    if env.get(ENV_HISTORY):
        return Path(env[ENV_HISTORY]).expanduser()
    base = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME", "~")) / ".local" / "state")
    return Path(base).expanduser() / "bucketly" / "history"


def load_profiles(path: Path) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Read the config file: ``(profiles, default_profile)``. A missing file has none."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        return {}, None
    except OSError as exc:
        raise SettingsError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"the config file {path} is not valid TOML: {exc}") from None
    unknown = set(data) - {"profiles", "default_profile"}
    if unknown:
        raise SettingsError(
            f"{path}: unknown top-level key {sorted(unknown)[0]!r} "
            "(expected 'default_profile' and [profiles.NAME] tables)"
        )
    profiles = data.get("profiles", {})
    default = data.get("default_profile")
    if not isinstance(profiles, dict) or not all(isinstance(p, dict) for p in profiles.values()):
        raise SettingsError(f"{path}: 'profiles' must hold [profiles.NAME] tables")
    if default is not None and not isinstance(default, str):
        raise SettingsError(f"{path}: 'default_profile' must be a string")
    for name, profile in profiles.items():
        for key, value in profile.items():
            if key not in PROFILE_KEYS:
                raise SettingsError(
                    f"{path}: profile {name!r} has an unknown key {key!r}; "
                    f"known keys: {', '.join(PROFILE_KEYS)}"
                )
            if not _profile_value_ok(key, value):
                raise SettingsError(
                    f"{path}: in profile {name!r}, {key!r} must be {PROFILE_KEYS[key]}"
                )
    return profiles, default


def _profile_value_ok(key: str, value: Any) -> bool:
    if key == "port":
        return isinstance(value, int) and not isinstance(value, bool)
    if key == "tls":
        return isinstance(value, bool)
    if key == "timeout":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if key == "servers":
        return isinstance(value, list) and bool(value) and all(_is_server(v) for v in value)
    return isinstance(value, str)


def _is_server(value: Any) -> bool:
    host, sep, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


def resolve_settings(
    flags: Mapping[str, Any], env: Mapping[str, str], *, profile: str | None = None
) -> Settings:
    """Merge ``flags`` (values given on the command line; None = not given), ``env`` and the
    profile into ``Settings``. ``profile`` is the ``--profile`` flag.

    Raises ``SettingsError`` for an unknown profile, a bad config file or a bad value.
    """
    path = config_path(env)
    profiles, default_profile = load_profiles(path)
    chosen = profile or env.get(ENV_PROFILE) or None
    explicit = chosen is not None
    if chosen is None:
        chosen = default_profile or ("default" if "default" in profiles else None)
    if chosen is not None and chosen not in profiles:
        if explicit or default_profile:
            known = ", ".join(sorted(profiles)) or "none"
            raise SettingsError(f"no profile {chosen!r} in {path} (profiles: {known})")
        chosen = None
    values: dict[str, Any] = dict(profiles.get(chosen, {})) if chosen else {}
    sources = {key: f"profile {chosen}" for key in values}

    for key, variable in (("password", values.pop("password_env", None)),
                          ("token", values.pop("token_env", None))):
        sources.pop(f"{key}_env", None)
        if variable and env.get(variable):  # an empty one counts as unset
            values[key] = env[variable]
            sources[key] = f"env {variable} (profile {chosen})"

    for key, var in ENV_VARS.items():
        raw = env.get(var)
        if not raw:
            continue  # set but empty counts as unset, for the password too
        values[key] = _parse_env(key, var, raw)
        sources[key] = f"env {var}"

    for key, value in flags.items():
        if value is not None:
            values[key] = _parse_env(key, "--servers", value) if key == "servers" else value
            sources[key] = "flag"

    settings = Settings(**values, profile=chosen)
    for key in ENV_VARS:
        sources.setdefault(key, "default")
    settings.sources = sources
    if not 0 < settings.port < 65536:
        raise SettingsError(f"port {settings.port} is out of range (1 to 65535)")
    if settings.timeout <= 0:
        raise SettingsError(f"timeout must be positive, not {settings.timeout}")
    return settings


def _parse_env(key: str, var: str, raw: str) -> Any:
    if key == "port":
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"{var}={raw!r} is not a port number") from None
    if key == "timeout":
        try:
            return float(raw)
        except ValueError:
            raise SettingsError(f"{var}={raw!r} is not a number of seconds") from None
    if key == "servers":
        servers = [part.strip() for part in raw.split(",") if part.strip()]
        if not servers or not all(_is_server(s) for s in servers):
            raise SettingsError(f'{var}={raw!r}: give "host:port,host:port"')
        return servers
    if key == "tls":
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise SettingsError(f"{var}={raw!r}: use 1 or 0")
    return raw
