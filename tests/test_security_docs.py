"""docs/security.md and the permission table of docs/protocol.md cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

from bucketly.protocol.ops import PERMISSIONS
from bucketly.server.config import options

DOCS = Path(__file__).resolve().parent.parent / "docs"

#: The options that are limits or security settings: each must be explained in security.md.
SECURITY_OPTIONS = {
    "max_frame_size", "max_connections", "auth_free_failures", "auth_max_delay", "auth_timeout",
    "frame_timeout", "pre_auth_bytes", "pre_auth_frames", "max_write_buffer", "tls_cert",
    "tls_key", "tls_client_ca",
}


def test_every_limit_is_in_the_security_page() -> None:
    text = (DOCS / "security.md").read_text(encoding="utf-8")
    names = {field.name for field in options()}
    assert names >= SECURITY_OPTIONS
    for name in SECURITY_OPTIONS:
        assert "--" + name.replace("_", "-") in text, name


def test_every_permission_is_in_the_protocol_table() -> None:
    text = (DOCS / "protocol.md").read_text(encoding="utf-8")
    table = set(re.findall(r"^\| `([\w.*]+)` \| ", text, re.M))
    assert set(PERMISSIONS) <= table, set(PERMISSIONS) - table
    security = (DOCS / "security.md").read_text(encoding="utf-8")
    for name in PERMISSIONS:
        assert f"`{name}`" in security, name
