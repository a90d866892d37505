"""The sans-I/O codec: round trips, any chunking, and errors. No server, no sockets."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bucketly.errors import BadArgument, FrameTooLarge
from bucketly.protocol import (
    OPS,
    ClientProtocol,
    ErrorReply,
    FrameDecoder,
    Greeting,
    Reply,
    Request,
    ServerProtocol,
    encode_frame,
    encode_message,
    pack,
    unpack,
    validate_args,
)

# MessagePack values that round-trip exactly (no float NaN: it never equals itself).
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=10) | st.integers(-100, 100), children, max_size=5)
    ),
    max_leaves=20,
)
request_ids = st.integers(min_value=0, max_value=2**64 - 1)
arg_maps = st.dictionaries(
    st.text(max_size=10).filter(lambda k: k not in ("id", "op")), values, max_size=4
)

requests = st.builds(Request, request_ids, st.text(min_size=1, max_size=20), arg_maps)
server_messages = (
    st.builds(Greeting, st.integers(0, 10), st.text(max_size=20), st.just(("password",)))
    | st.builds(Reply, request_ids, values)
    | st.builds(
        ErrorReply, request_ids | st.none(), st.text(max_size=20), st.text(max_size=40), values
    )
)


@given(st.lists(requests, max_size=8), st.integers(min_value=1, max_value=64))
def test_requests_round_trip_through_any_chunking(messages: list[Request], chunk: int) -> None:
    stream = b"".join(encode_message(m) for m in messages)
    server = ServerProtocol()
    decoded = []
    for start in range(0, len(stream), chunk):
        server.receive_data(stream[start : start + chunk])
        while (item := server.next_request()) is not None:
            decoded.append(item)
    assert decoded == messages
    assert server.buffered == 0


@given(st.lists(server_messages, max_size=8), st.integers(min_value=1, max_value=64))
def test_server_messages_round_trip_through_any_chunking(messages: list[Any], chunk: int) -> None:
    stream = b"".join(encode_message(m) for m in messages)
    client = ClientProtocol()
    decoded = []
    for start in range(0, len(stream), chunk):
        client.receive_data(stream[start : start + chunk])
        while (item := client.next_event()) is not None:
            decoded.append(item)
    expected = [
        ErrorReply(m.id, m.code, m.message, m.detail) if isinstance(m, ErrorReply) else m
        for m in messages
    ]
    assert decoded == expected


def test_every_cut_of_a_stream_decodes_the_same() -> None:
    messages = [
        Request(1, "ping"),
        Request(2, "send", {"bucket": "b", "events": [1, "x", None]}),
        Request(3, "view", {"bucket": "b", "view": "v", "args": {"a": [1.5]}}),
    ]
    stream = b"".join(encode_message(m) for m in messages)
    for cut in range(len(stream) + 1):
        server = ServerProtocol()
        out = []
        for part in (stream[:cut], stream[cut:]):
            server.receive_data(part)
            while (item := server.next_request()) is not None:
                out.append(item)
        assert out == messages, cut


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_garbage_never_escapes_as_anything_but_an_error_reply(body: bytes) -> None:
    server = ServerProtocol(max_frame_size=1000)
    server.receive_data(encode_frame(body))
    item = server.next_request()
    assert isinstance(item, (Request, ErrorReply))
    if isinstance(item, ErrorReply):
        assert item.code in ("bad_frame", "bad_request")


def test_oversize_frame_is_refused_from_its_header() -> None:
    decoder = FrameDecoder(max_frame_size=100)
    decoder.receive_data((101).to_bytes(4, "big"))  # no body at all yet
    with pytest.raises(FrameTooLarge, match="101 bytes"):
        decoder.next_frame()


def test_a_frame_at_the_limit_is_accepted() -> None:
    decoder = FrameDecoder(max_frame_size=100)
    decoder.receive_data(encode_frame(b"x" * 100))
    assert decoder.next_frame() == b"x" * 100


@pytest.mark.parametrize(
    ("body", "code", "request_id"),
    [
        (pack([1, 2]), "bad_request", None),
        (pack({"op": "ping"}), "bad_request", None),
        (pack({"id": -1, "op": "ping"}), "bad_request", None),
        (pack({"id": True, "op": "ping"}), "bad_request", None),
        (pack({"id": 7}), "bad_request", 7),
        (pack({"id": 7, "op": 5}), "bad_request", 7),
        (b"\xc1", "bad_frame", None),
        (b"", "bad_frame", None),
        (b"\xa2\xff\xfe", "bad_frame", None),  # invalid UTF-8 in a string
        (b"\xd4\x01\x02", "bad_frame", None),  # extension types are not part of the protocol
    ],
)
def test_unreadable_requests_become_error_replies(body: bytes, code: str, request_id: Any) -> None:
    server = ServerProtocol()
    server.receive_data(encode_frame(body) + encode_message(Request(8, "ping")))
    error = server.next_request()
    assert isinstance(error, ErrorReply)
    assert (error.code, error.id) == (code, request_id)
    assert server.next_request() == Request(8, "ping")  # the stream goes on


def test_sets_are_sent_as_arrays() -> None:
    assert sorted(unpack(pack({"s": {3, 1, 2}}))["s"]) == [1, 2, 3]


def test_validate_args_checks_types_and_names() -> None:
    view = OPS["view"]
    validate_args(view, {"bucket": "b", "view": "v"})
    with pytest.raises(BadArgument, match="missing argument 'view'"):
        validate_args(view, {"bucket": "b"})
    with pytest.raises(BadArgument, match="'bucket' must be of type str"):
        validate_args(view, {"bucket": 1, "view": "v"})
    with pytest.raises(BadArgument, match="unknown argument 'x'"):
        validate_args(view, {"bucket": "b", "view": "v", "x": 1})
    with pytest.raises(BadArgument, match="must be of type bool"):
        validate_args(OPS["create_bucket"], {"bucket": "b", "handler": "h", "durable": 1})


def test_protocol_package_does_no_io() -> None:
    """bucketly.protocol (and its statsd parser) imports with socket, asyncio and sqlite3 made
    unimportable."""
    code = (
        "import sys\n"
        "for name in ('socket', 'asyncio', 'sqlite3', 'selectors', 'ssl'):\n"
        "    sys.modules[name] = None\n"
        "import bucketly.protocol\n"
        "from bucketly.protocol import statsd\n"
        "print('ok')\n"
    )
    # bucketly/__init__ pulls in the clients; import the subpackage on its own.
    code = code.replace(
        "import bucketly.protocol",
        "import importlib.util, types\n"
        "spec = importlib.util.find_spec('bucketly')\n"
        "pkg = types.ModuleType('bucketly'); pkg.__path__ = spec.submodule_search_locations\n"
        "sys.modules['bucketly'] = pkg\n"
        "import bucketly.protocol",
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr


# -- fuzzing the server's side of the codec ------------------------------------------------------
#
# Bounded (a few seconds in CI). A failure hypothesis finds is shrunk to a small example and kept
# in its database (.hypothesis/); copy it into an ``@example(...)`` below so that it runs forever
# after as a regression test.

_valid_frames = st.builds(
    lambda rid, op, args: encode_message(Request(rid, op, args)),
    request_ids,
    st.sampled_from(sorted(OPS)) | st.text(max_size=8),
    arg_maps,
)
_garbage_frames = st.binary(max_size=64).map(encode_frame)
_headers = st.integers(min_value=0, max_value=2**32 - 1).map(lambda n: n.to_bytes(4, "big"))
_pieces = st.lists(
    _valid_frames | _garbage_frames | _headers | st.binary(max_size=32), max_size=12
)


@settings(max_examples=400, deadline=None)
@example(pieces=[b"\x00\x00\x00\x00"], cuts=[1])
@example(pieces=[b"\x00\x00\x00\x03\xdd\xff\xff"], cuts=[2, 3])
@example(pieces=[encode_frame(b"\x82\xa2id\x01\xa2op\xa2\xff\xfe")], cuts=[5])
@given(_pieces, st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=10))
def test_any_byte_stream_in_any_chunks_yields_requests_or_error_replies(
    pieces: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(pieces)
    server = ServerProtocol(max_frame_size=4096)
    position, turn = 0, 0
    while position < len(stream):
        size = cuts[turn % len(cuts)]
        server.receive_data(stream[position : position + size])
        position += size
        turn += 1
        try:
            while (item := server.next_request()) is not None:
                assert type(item) in (Request, ErrorReply), item
                if isinstance(item, Request):
                    assert type(item.id) is int and 0 <= item.id < 2**64
                    assert type(item.op) is str and isinstance(item.args, dict)
                    if item.op in OPS:
                        _validate_or_bad_argument(item)
                else:
                    assert item.code in ("bad_frame", "bad_request")
        except FrameTooLarge:
            return  # the connection is closed: nothing after it counts
    assert server.buffered <= len(stream)


def _validate_or_bad_argument(request: Request) -> None:
    try:
        validate_args(OPS[request.op], request.args)
    except BadArgument as exc:
        assert len(exc.message) < 500


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(OPS)), st.dictionaries(st.text(max_size=10) | st.integers(),
                                                     values, max_size=5))
def test_validate_args_only_ever_raises_bad_argument(name: str, args: dict[Any, Any]) -> None:
    try:
        validate_args(OPS[name], args)
    except BadArgument:
        pass


def test_no_op_argument_shadows_the_envelope() -> None:
    """Regression: an argument named ``id`` overwrote the request's id (revoke_token hung)."""
    for op in OPS.values():
        assert not {arg.name for arg in op.args} & {"id", "op"}, op.name
    from bucketly.protocol import Op
    from bucketly.protocol.ops import Arg

    with pytest.raises(ValueError):
        Op("x", "shadows the id", (Arg("id", "int"),), scope="authenticated")


def test_the_codec_imports_no_io_and_no_layer_above_it() -> None:
    """bucketly.protocol is sans-I/O: it imports no sockets, asyncio or sqlite, and nothing of
    the layers above it (handler data types included). The native helpers, ``_speedups``, are
    a leaf that imports nothing of bucketly: the codec may count a frame's values with them."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import importlib.util, sys, types
        for name in ("socket", "asyncio", "sqlite3", "ssl", "selectors"):
            sys.modules[name] = None  # importing one now raises ImportError
        # bucketly/__init__ imports the clients: load the package without running it.
        spec = importlib.util.find_spec("bucketly")
        package = types.ModuleType("bucketly")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["bucketly"] = package
        import bucketly.protocol
        above = sorted(
            name for name in sys.modules
            if name.startswith("bucketly.")
            and not name.startswith("bucketly.protocol")
            and name not in ("bucketly.errors", "bucketly._speedups")
        )
        assert above == [], above
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_unique_index_subclass_is_sent_as_its_items() -> None:
    from bucketly.protocol import pack, unpack
    from bucketly.unique import PyUniqueIndex

    class Mine(PyUniqueIndex):
        pass

    index = Mine()
    index.add("/a", "ann")
    assert unpack(pack({"x": index})) == {"x": {"/a": ["ann"]}}
