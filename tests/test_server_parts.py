"""The sans-I/O parts of a server connection, in memory: the durable pipeline, the decisions."""

from __future__ import annotations

import asyncio

from bucketly.errors import StorageError
from bucketly.protocol import ClientProtocol, Greeting, ServerProtocol
from bucketly.server.permissions import MAX_CACHED_DECISIONS, Decisions
from bucketly.server.pipeline import MAX_PIPELINED_SENDS, Pipeline


def _decode(chunks: list[bytes]) -> list[object]:
    client = ClientProtocol()
    client.receive_data(ServerProtocol().greeting("test") + b"".join(chunks))
    out = []
    while (message := client.next_event()) is not None:
        if not isinstance(message, Greeting):
            out.append(message)
    return out


def test_the_pipeline_answers_in_request_order_as_commits_complete() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        protocol = ServerProtocol()
        pipeline = Pipeline("test")
        first, second, third = (loop.create_future() for _ in range(3))
        pipeline.add_send(1, first, True, 100)
        pipeline.add_reply(protocol.error(2, StorageError("in its place")))
        pipeline.add_send(3, second, False, 50)  # ack: false, no reply
        pipeline.add_send(4, third, True, 25)
        assert pipeline.cost == 175 and pipeline.head() is first
        third.set_result({"accepted": 3})  # done out of order: waits for those before it
        assert pipeline.take_ready(protocol) == []
        first.set_result({"accepted": 1})
        replies = _decode(pipeline.take_ready(protocol))
        assert [r.id for r in replies] == [1, 2]  # type: ignore[attr-defined]
        assert pipeline.head() is second and pipeline.cost == 75
        second.set_exception(StorageError("disk full"))
        replies = _decode(pipeline.take_ready(protocol))
        assert [(r.id, getattr(r, "code", None)) for r in replies] == [  # type: ignore[attr-defined]
            (3, "storage_error"), (4, None)
        ]
        assert not pipeline and pipeline.cost == 0

    asyncio.run(body())


def test_the_pipeline_is_full_by_count_or_by_cost() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        pipeline = Pipeline("test")
        pipeline.add_send(1, loop.create_future(), True, 1000)
        assert pipeline.full(1000) and not pipeline.full(1001)
        for i in range(MAX_PIPELINED_SENDS - 1):
            pipeline.add_send(2 + i, loop.create_future(), True, 0)
        assert pipeline.full(10**9)

    asyncio.run(body())


def test_decisions_need_the_user_and_the_token_and_stay_bounded() -> None:
    decisions = Decisions()
    user = {("send", "clicks.*"), ("view", "*")}
    assert decisions.allowed(user, None, "view", "orders")
    assert not decisions.allowed(user, None, "send", "orders")
    token = frozenset({("send", "clicks.eu")})
    decisions.clear()
    assert decisions.allowed(user, token, "send", "clicks.eu")
    assert not decisions.allowed(user, token, "send", "clicks.us")  # the user may, not the token
    assert not decisions.allowed(user, token, "view", "clicks.eu")
    decisions.clear()  # (the cache holds one login's decisions: cleared when it changes)
    assert not decisions.allowed(set(), token, "send", "clicks.eu")  # the token alone is nothing
    for i in range(3 * MAX_CACHED_DECISIONS):
        decisions.allowed(user, None, "view", f"b{i}")
    assert len(decisions.cache) <= MAX_CACHED_DECISIONS
