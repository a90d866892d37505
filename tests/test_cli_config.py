"""Connection settings of the ``bucketly`` CLI: flags > environment > profile > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from bucketly.cli.config import SettingsError, history_path, resolve_settings


def write_config(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return {"BUCKETLY_CONFIG": str(path)}


def test_defaults(tmp_path: Path) -> None:
    settings = resolve_settings({}, {"HOME": str(tmp_path)})
    assert (settings.host, settings.port, settings.user, settings.password) == (
        "127.0.0.1", 8484, None, None)
    assert not settings.uses_tls
    assert settings.sources["host"] == "default"


def test_precedence(tmp_path: Path) -> None:
    env = write_config(tmp_path, """
default_profile = "p"
[profiles.p]
host = "profile-host"
port = 1111
user = "profile-user"
password_env = "P_PASSWORD"
tls = true
""")
    env.update({"P_PASSWORD": "from-profile-var", "BUCKETLY_PORT": "2222"})
    settings = resolve_settings({"user": "flag-user"}, env)
    assert settings.host == "profile-host"
    assert settings.port == 2222
    assert settings.user == "flag-user"
    assert settings.password == "from-profile-var"
    assert settings.tls is True
    assert settings.profile == "p"
    assert settings.sources["port"] == "env BUCKETLY_PORT"
    assert settings.sources["host"] == "profile p"
    assert settings.sources["user"] == "flag"
    env["BUCKETLY_PASSWORD"] = "from-env"
    assert resolve_settings({}, env).password == "from-env"
    assert resolve_settings({"password": "flag"}, env).password == "flag"
    assert "from" not in repr(resolve_settings({}, env))  # never printed by accident


def test_profile_named_default_is_used_without_default_profile(tmp_path: Path) -> None:
    env = write_config(tmp_path, "[profiles.default]\nport = 9999\n[profiles.other]\nport = 1\n")
    assert resolve_settings({}, env).port == 9999
    assert resolve_settings({}, env, profile="other").port == 1
    env["BUCKETLY_PROFILE"] = "other"
    assert resolve_settings({}, env).port == 1


def test_empty_variables_count_as_unset(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "BUCKETLY_PASSWORD": "", "BUCKETLY_HOST": ""}
    settings = resolve_settings({}, env)
    assert settings.password is None
    assert settings.host == "127.0.0.1"


@pytest.mark.parametrize(("env", "message"), [
    ({"BUCKETLY_PORT": "http"}, "not a port number"),
    ({"BUCKETLY_PORT": "70000"}, "out of range"),
    ({"BUCKETLY_TIMEOUT": "soon"}, "seconds"),
    ({"BUCKETLY_TIMEOUT": "0"}, "positive"),
    ({"BUCKETLY_TLS": "maybe"}, "use 1 or 0"),
    ({"BUCKETLY_PROFILE": "nope"}, "no profile 'nope'"),
])
def test_bad_values(tmp_path: Path, env: dict[str, str], message: str) -> None:
    env = {"HOME": str(tmp_path), **env}
    with pytest.raises(SettingsError, match=message):
        resolve_settings({}, env)


@pytest.mark.parametrize(("text", "message"), [
    ("[profiles.p]\nport = '8484'\n", "'port' must be an integer"),
    ("[profiles.p]\npassword = 'x'\n", "unknown key 'password'"),
    ("profiles = 3\n", "must hold"),
    ("colour = 'blue'\n", "unknown top-level key 'colour'"),
    ("[profiles.p\n", "not valid TOML"),
    ("default_profile = 'missing'\n", "no profile 'missing'"),
])
def test_bad_config_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        resolve_settings({}, write_config(tmp_path, text))


def test_history_path() -> None:
    assert history_path({"HOME": "/h"}) == Path("/h/.local/state/bucketly/history")
    assert history_path({"XDG_STATE_HOME": "/s"}) == Path("/s/bucketly/history")
    assert history_path({"BUCKETLY_HISTORY": "/x/hist"}) == Path("/x/hist")

