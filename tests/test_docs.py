"""Docs that cannot drift: docs/*.md are checked against the code they describe.

- every op in ``bucketly.protocol.OPS`` has a ``### `op``` section in docs/protocol.md whose
  argument table, permission line and examples agree with the op table;
- every code in ``bucketly.errors.WIRE_CODES`` has a ``### `code``` entry, and no entry is stale;
- every ``ServerConfig`` field has its flag and environment variable in docs/configuration.md, and
  the generated options reference there is what ``bucketly.server.config.options()`` says now;
- every hex example in docs/protocol.md decodes to the message printed above it, and the example
  session is what a real bucketlyd sends back when replayed byte for byte.

The generated parts of the docs are rewritten, from the code and from a real server session, by::

    python tests/test_docs.py --update
"""

from __future__ import annotations

import binascii
import json
import re
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from bucketly.cli.daemon import build_command
from bucketly.errors import WIRE_CODES
from bucketly.protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    OPS,
    FrameDecoder,
    decode_server_message,
    encode_frame,
    encode_request,
    pack,
    request_from_wire,
    unpack,
    validate_args,
)
from bucketly.server.config import DEFAULT_PORT, ENV_PREFIX, ServerConfig, options

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PROTOCOL = DOCS / "protocol.md"
CONFIGURATION = DOCS / "configuration.md"
HANDLERS = DOCS / "handlers.md"
EXAMPLE_HANDLERS = ROOT / "examples" / "hndlrs.py"

# -- reading the docs -------------------------------------------------------------------------


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _chapter(text: str, title: str) -> str:
    """The text of the ``## title`` chapter, up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no '## {title}' chapter"
    return match.group(1)


def _sections(chapter: str) -> dict[str, str]:
    """``### `name``` headings of a chapter -> the text under each."""
    parts = re.split(r"^### `([^`]+)`[^\n]*\n", chapter, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _generated(text: str, name: str) -> str:
    match = re.search(
        rf"<!-- BEGIN GENERATED: {name}\b[^>]*-->\n(.*?)<!-- END GENERATED: {name} -->",
        text, re.S,
    )
    assert match, f"no generated region {name!r}"
    return match.group(1)


def _replace_generated(text: str, name: str, content: str) -> str:
    pattern = rf"(<!-- BEGIN GENERATED: {name}\b[^>]*-->\n).*?(<!-- END GENERATED: {name} -->)"
    new, count = re.subn(pattern, lambda m: m.group(1) + content + m.group(2), text, flags=re.S)
    assert count == 1, f"no generated region {name!r}"
    return new


# Hex examples: a ```json block with the message, then a ```hex block with its frame.
_HEX_EXAMPLE = re.compile(r"```json\n(.*?)```\s*```hex\n(.*?)```", re.S)
# Headings of the steps of the example session.
_STEP = re.compile(r"^\*\*\d+\. (Client → server|Server → client): [^*]+\*\*$", re.M)


def _frames(hex_text: str) -> list[bytes]:
    """Split the bytes of a hex block into complete frames (header included)."""
    data = binascii.unhexlify(re.sub(r"\s+", "", hex_text))
    decoder = FrameDecoder(DEFAULT_MAX_FRAME_SIZE)
    decoder.receive_data(data)
    frames = []
    while (body := decoder.next_frame()) is not None:
        frames.append(encode_frame(body))
    assert decoder.buffered == 0, f"{decoder.buffered} bytes left over after the last frame"
    return frames


def session_steps(text: str) -> list[tuple[str, Any, bytes]]:
    """``(direction, message, frame)`` for each step of the example session in protocol.md."""
    region = _generated(text, "example-session")
    heads = list(_STEP.finditer(region))
    assert heads, "the example session has no steps"
    steps = []
    for head, nxt in zip(heads, [*heads[1:], None], strict=True):
        body = region[head.end() : nxt.start() if nxt else len(region)]
        examples = _HEX_EXAMPLE.findall(body)
        assert len(examples) == 1, f"step {head.group(0)!r} needs one json block and one hex block"
        value_text, hex_text = examples[0]
        (frame,) = _frames(hex_text)
        direction = "client" if head.group(1).startswith("Client") else "server"
        steps.append((direction, json.loads(value_text), frame))
    return steps


# -- generating the docs ----------------------------------------------------------------------


def _hex(frame: bytes) -> str:
    """The header on its own line, then the body 16 bytes a line."""
    lines = [frame[:4].hex(" ")]
    body = frame[4:]
    lines += [body[i : i + 16].hex(" ") for i in range(0, len(body), 16)]
    return "\n".join(lines)


#: The client's side of the example session: (what the step shows, request).
SESSION_REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("authenticate", {"id": 1, "op": "auth", "user": "admin", "password": "admin"}),
    ("create a bucket",
     {"id": 2, "op": "create_bucket", "bucket": "clicks", "handler": "UniqueClicks"}),
    ("send a batch of three events",
     {"id": 3, "op": "send", "bucket": "clicks", "events": [
         {"url": "/pricing", "user": "ann"},
         {"url": "/pricing", "user": "bob"},
         {"url": "/pricing", "user": "ann"},
     ]}),
    ("call a view",
     {"id": 4, "op": "view", "bucket": "clicks", "view": "count", "args": {"url": "/pricing"}}),
]


class RawConnection:
    """A plain socket speaking frames, keeping the exact bytes of each frame received."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.decoder = FrameDecoder(DEFAULT_MAX_FRAME_SIZE)

    def read_frame(self) -> bytes:
        while (body := self.decoder.next_frame()) is None:
            data = self.sock.recv(65536)
            assert data, "the server closed the connection"
            self.decoder.receive_data(data)
        return encode_frame(body)

    def close(self) -> None:
        self.sock.close()


def capture_session() -> list[tuple[str, str, bytes]]:
    """Run the example session against a real bucketlyd: ``(direction, title, frame)``."""
    from bucketly.testing import run_server

    steps: list[tuple[str, str, bytes]] = []
    with run_server(handlers=EXAMPLE_HANDLERS) as server:
        conn = RawConnection(server.host, server.port)
        try:
            steps.append(("server", "greeting", conn.read_frame()))
            for title, request in SESSION_REQUESTS:
                fields = dict(request)
                frame = encode_request(fields.pop("id"), fields.pop("op"), fields)
                conn.sock.sendall(frame)
                steps.append(("client", f"`{request['op']}` request ({title})", frame))
                steps.append(("server", f"reply to request {request['id']}", conn.read_frame()))
        finally:
            conn.close()
    return steps


def render_session(steps: list[tuple[str, str, bytes]]) -> str:
    out = []
    for number, (direction, title, frame) in enumerate(steps, 1):
        arrow = "Client → server" if direction == "client" else "Server → client"
        value = json.dumps(unpack(frame[4:]), ensure_ascii=False)
        out.append(
            f"**{number}. {arrow}: {title}**\n\n"
            f"```json\n{value}\n```\n\n"
            f"```hex\n{_hex(frame)}\n```\n"
        )
    return "\n".join(out)


def render_options() -> str:
    """The options reference of docs/configuration.md, from ServerConfig and the real CLI."""
    params = {param.name: param for param in build_command().params}
    out = []
    for field in options():
        param = params[field.name]
        meta = field.metadata
        if meta.get("positional"):
            heading = f"`{field.name.upper()}`"
            usage = f"`bucketlyd [OPTIONS] [{field.name.upper()}]` (optional positional argument)"
        else:
            dashed = "--" + field.name.replace("_", "-")
            heading = f"`{dashed}`"
            kind = param.type.name.upper()
            if "choices" in meta:
                kind = "|".join(meta["choices"])
            spellings = [dashed] + [o for o in param.opts if o != dashed]
            usage = " or ".join(f"`{o} {kind}`" for o in spellings)
        out.append(
            f"### {heading}\n\n"
            f"- Usage: {usage}\n"
            f"- Environment: `{param.envvar}`\n"
            f"- Default: `{field.default}`\n\n"
            f"{meta['help']}\n"
        )
    return "\n".join(out)


def update() -> None:
    text = _read(CONFIGURATION)
    CONFIGURATION.write_text(_replace_generated(text, "options", render_options()),
                             encoding="utf-8")
    text = _read(PROTOCOL)
    captured = capture_session()
    try:
        current = session_steps(text)
    except (AssertionError, ValueError):
        current = []
    same = [(d, _normalize(m, version=False)) for d, m, _ in current] == [
        (d, _normalize(unpack(frame[4:]), version=False)) for d, _, frame in captured
    ]
    if not same:  # keep the old capture when only the creation time would change
        text = _replace_generated(text, "example-session", render_session(captured))
        PROTOCOL.write_text(text, encoding="utf-8")


# -- protocol.md: ops -------------------------------------------------------------------------


def _op_sections() -> dict[str, str]:
    return _sections(_chapter(_read(PROTOCOL), "Ops"))


def test_every_op_has_a_section() -> None:
    sections = _op_sections()
    assert sorted(set(OPS) - set(sections)) == [], "ops without a section in docs/protocol.md"
    assert sorted(set(sections) - set(OPS)) == [], "sections for ops that do not exist"


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_section_matches_the_op_table(name: str) -> None:
    op = OPS[name]
    section = _op_sections()[name]
    rows = re.findall(r"^\| `(\w+)` \| (\w+) \| (yes|no) \|", section, re.M)
    documented = {arg: (kind, required == "yes") for arg, kind, required in rows}
    declared = {arg.name: (arg.type, arg.required) for arg in op.args}
    assert documented == declared, f"argument table of `{name}` differs from OPS"
    if not op.args:
        assert "Arguments: none." in section

    permission = re.search(r"^\*\*Permission:\*\* (.*)$", section, re.M)
    assert permission, f"`{name}` has no **Permission:** line"
    line = permission.group(1)
    if op.permission is not None:
        assert f"`{op.permission}`" in line
    elif op.scope == "none":
        assert "before authentication" in line
    else:
        assert "any authenticated user" in line

    assert re.search(r"^\*\*Result:\*\*", section, re.M), f"`{name}` has no **Result:** line"
    errors = re.search(r"^\*\*Errors:\*\* (.*?)(?:\n\n|\Z)", section, re.M | re.S)
    assert errors, f"`{name}` has no **Errors:** paragraph"
    # The list is "`code` (comment), `code`, ...": codes open the paragraph or follow a comma.
    named = set(re.findall(r"(?:^|, )`(\w+)`", errors.group(1)))
    assert named or errors.group(1).startswith("only the general ones")
    assert named <= set(WIRE_CODES), f"unknown error codes: {named - set(WIRE_CODES)}"


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_examples_are_valid(name: str) -> None:
    """Each op's example requests are valid requests for that op; replies match by id."""
    section = _op_sections()[name]
    requests = [json.loads(r) for r in re.findall(r"^→ (.*)$", section, re.M)]
    replies = [json.loads(r) for r in re.findall(r"^← (.*)$", section, re.M)]
    assert requests, f"`{name}` has no example"
    ids = set()
    for obj in requests:
        request = request_from_wire(obj)
        assert request.op == name
        validate_args(OPS[name], request.args)
        ids.add(request.id)
    for obj in replies:
        message = decode_server_message(obj)
        assert message.id in ids, f"example reply to an id no example request has: {obj}"
        if hasattr(message, "code"):
            assert message.code in WIRE_CODES


# -- protocol.md: error codes -----------------------------------------------------------------


def test_every_error_code_has_an_entry() -> None:
    entries = _sections(_chapter(_read(PROTOCOL), "Error codes"))
    assert sorted(set(WIRE_CODES) - set(entries)) == [], "codes without an entry"
    assert sorted(set(entries) - set(WIRE_CODES)) == [], "entries for codes the server never sends"
    for code, text in entries.items():
        assert re.search(r"^\*\*Connection:\*\* (stays open|closed)", text, re.M), (
            f"entry `{code}` does not say whether the connection stays open"
        )


def test_protocol_constants() -> None:
    text = _read(PROTOCOL)
    assert f"port {DEFAULT_PORT}" in text
    assert f"{DEFAULT_MAX_FRAME_SIZE} bytes" in text


# -- protocol.md: hex examples ----------------------------------------------------------------


def test_hex_examples_decode_to_the_messages_shown() -> None:
    text = _read(PROTOCOL)
    examples = _HEX_EXAMPLE.findall(text)
    assert len(examples) > len(SESSION_REQUESTS)
    for value_text, hex_text in examples:
        frames = _frames(hex_text)
        assert len(frames) == 1, "a hex block holds exactly one frame"
        frame = frames[0]
        assert int.from_bytes(frame[:4], "big") == len(frame) - 4
        assert unpack(frame[4:]) == json.loads(value_text)
        # The bytes are what our encoder makes of the message (canonical, shortest forms).
        assert pack(json.loads(value_text)) == frame[4:]


def test_example_session_is_well_formed() -> None:
    steps = session_steps(_read(PROTOCOL))
    directions = [direction for direction, _, _ in steps]
    assert directions[0] == "server", "the server speaks first"
    assert "greeting" not in directions
    greeting = decode_server_message(steps[0][1])
    assert greeting.protocol == 1  # type: ignore[union-attr]
    ops = []
    for (direction, message, _), (next_direction, reply, _) in zip(
        steps[1::2], steps[2::2], strict=True
    ):
        assert (direction, next_direction) == ("client", "server")
        request = request_from_wire(message)
        validate_args(OPS[request.op], request.args)
        answer = decode_server_message(reply)
        assert answer.id == request.id and hasattr(answer, "result"), "every step succeeds"
        ops.append(request.op)
    assert ops == [op for _, r in SESSION_REQUESTS for op in [r["op"]]]


def _normalize(value: Any, *, version: bool = True) -> Any:
    """Mask what differs from run to run: bucket creation times (and the server's version)."""
    if isinstance(value, dict):
        return {
            k: "<created_at>" if k == "created_at"
            else "<server>" if version and k == "server" and isinstance(v, str)
            else _normalize(v, version=version)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_normalize(v, version=version) for v in value]
    return value


def test_example_session_replays_against_a_real_server() -> None:
    """Send the documented client bytes to bucketlyd; it must answer what the doc shows."""
    from bucketly.testing import run_server

    steps = session_steps(_read(PROTOCOL))
    with run_server(handlers=EXAMPLE_HANDLERS) as server:
        conn = RawConnection(server.host, server.port)
        try:
            for direction, message, frame in steps:
                if direction == "client":
                    conn.sock.sendall(frame)
                else:
                    got = unpack(conn.read_frame()[4:])
                    assert _normalize(got) == _normalize(message)
        finally:
            conn.close()


# -- configuration.md -------------------------------------------------------------------------


def test_every_option_is_documented() -> None:
    text = _read(CONFIGURATION)
    for field in options():
        if field.metadata.get("positional"):
            assert f"`{field.name.upper()}`" in text
        else:
            assert "--" + field.name.replace("_", "-") in text, f"--{field.name} not documented"
        env = ENV_PREFIX + field.name.upper()
        assert f"`{env}`" in text, f"{env} not documented"
    assert {f.name for f in options()} == set(ServerConfig.__dataclass_fields__)


def test_options_reference_is_up_to_date() -> None:
    assert _generated(_read(CONFIGURATION), "options") == render_options(), (
        "docs/configuration.md is out of date: run python tests/test_docs.py --update"
    )


def test_ready_line_is_documented_as_logged() -> None:
    from bucketly.testing import _READY

    text = _read(CONFIGURATION)
    assert "`bucketlyd ready on HOST:PORT`" in text
    assert _READY.search("bucketlyd ready on 127.0.0.1:8484")


# -- handlers.md ------------------------------------------------------------------------------


def _handler_blocks() -> list[dict[str, Any]]:
    """Execute each ```python block of handlers.md that defines a handler; its namespace."""
    namespaces = []
    for block in re.findall(r"```python\n(.*?)```", _read(HANDLERS), re.S):
        if "(bucketly.Handler)" not in block:
            continue
        if "import psycopg" in block:
            pytest.importorskip("psycopg")
        namespace: dict[str, Any] = {}
        exec(compile(block, str(HANDLERS), "exec"), namespace)
        namespaces.append(namespace)
    return namespaces


def test_handlers_doc_examples_are_valid_handlers() -> None:
    from bucketly.handlers import Handler, inspect_handler

    namespaces = _handler_blocks()
    assert len(namespaces) >= 2
    for namespace in namespaces:
        classes = [v for v in namespace.values()
                   if isinstance(v, type) and issubclass(v, Handler) and v is not Handler]
        assert classes
        for cls in classes:
            inspect_handler(cls.__name__, cls)


def test_slow_io_pattern_loses_nothing() -> None:
    """The take-then-restore example of handlers.md: a failed write puts its batch back, events
    that arrive during the write are kept, and the next run writes everything."""
    import asyncio
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from bucketly.buckets import Bucket, JobRunner
    from bucketly.handlers import inspect_handler
    from bucketly.store import BucketRow

    (namespace,) = [ns for ns in _handler_blocks() if "UniqueClicksToPostgres" in ns]
    written: set[tuple[str, str]] = set()
    release = threading.Event()
    attempts = []

    def fake_write_clicks(dsn: str, batch: dict[str, set[str]]) -> None:
        attempts.append(sum(len(users) for users in batch.values()))
        assert release.wait(5)
        if len(attempts) == 1:
            raise OSError("connection refused")
        written.update((url, user) for url, users in batch.items() for user in users)

    namespace["write_clicks"] = fake_write_clicks
    cls = namespace["UniqueClicksToPostgres"]
    info = inspect_handler(cls.__name__, cls)
    row = BucketRow("clicks", cls.__name__, {"dsn": "postgresql://x"}, "memory", 0.0)
    bucket = Bucket(row, info)
    assert bucket.broken is None

    async def scenario() -> None:
        with ThreadPoolExecutor(1) as executor:
            runner = JobRunner(bucket, "flush", info.jobs["flush"], executor)
            bucket.apply([{"url": "/a", "user": "ann"}, {"url": "/a", "user": "bob"}])
            first = asyncio.get_running_loop().create_task(runner.run_once())
            while not attempts:
                await asyncio.sleep(0.001)
            # While the write is in the worker thread, the bucket takes events.
            bucket.apply([{"url": "/a", "user": "cy"}, {"url": "/b", "user": "ann"}])
            release.set()
            await first
            assert runner.failures == 1
            assert bucket.view("pending_pairs", {}) == 4  # put back, merged with the new ones
            await runner.run_once()
            assert runner.consecutive_failures == 0
            assert bucket.view("pending_pairs", {}) == 0

    asyncio.run(scenario())
    assert attempts == [2, 4]
    assert written == {("/a", "ann"), ("/a", "bob"), ("/a", "cy"), ("/b", "ann")}


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python tests/test_docs.py --update")
    update()
