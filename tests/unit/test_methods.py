"""MethodRouter: a call reaches a connected, subscribed child and its caller hears exactly one
answer: the child's, 404 when it cannot be reached, 504 at the timeout or when it leaves."""

from __future__ import annotations

import asyncio
import json

from gateway.hub.methods import (
    STATUS_NOT_CONNECTED,
    STATUS_TIMEOUT,
    MethodRouter,
    request_topic,
)
from tests.support.recording_child import RecordingChild, child_server, connect


class Caller:
    """Records every reply; `first` resolves with the first one (an event to await)."""

    def __init__(self) -> None:
        self.replies: list[tuple[int, bytes]] = []
        self.first: asyncio.Future = asyncio.get_running_loop().create_future()

    def __call__(self, status: int, payload: bytes) -> None:
        self.replies.append((status, payload))
        if not self.first.done():
            self.first.set_result((status, payload))


def rid_of(child: RecordingChild, index: int = -1) -> str:
    return child.delivered[index][0].split("$rid=")[1]


def test_a_call_is_delivered_and_answered_once():
    async def scenario() -> None:
        server = child_server()
        router = MethodRouter(server)
        child = connect(server, RecordingChild("d"))
        caller = Caller()
        router.invoke("d", "reboot", b'{"delay": 3}', 30, caller)
        topic, payload, qos = child.delivered[0]
        rid = rid_of(child)
        assert topic == request_topic("reboot", rid) and payload == b'{"delay": 3}' and qos == 0
        assert router.answer("other", rid, 200, b"{}") is False, "only the called device answers"
        assert router.answer("d", rid, 200, b'{"done": true}') is True
        assert router.answer("d", rid, 200, b"{}") is False, "a second answer finds no call"
        assert caller.replies == [(200, b'{"done": true}')]
        assert router.invoked == 1 and router.timed_out == 0

    asyncio.run(scenario())


def test_a_device_that_cannot_receive_the_call_is_404_at_once():
    async def scenario() -> None:
        server = child_server()
        router = MethodRouter(server)
        unsubscribed = connect(server, RecordingChild("u", subscriptions=("$iothub/twin/#",)))
        closed = connect(server, RecordingChild("c"))
        closed.is_open = False
        for device in ("absent", "u", "c"):
            caller = Caller()
            router.invoke(device, "m", b"{}", 30, caller)
            assert [status for status, _ in caller.replies] == [STATUS_NOT_CONNECTED], device
            assert device in json.loads(caller.replies[0][1])["message"]
        assert unsubscribed.delivered == [] and closed.delivered == []
        assert router.invoked == 0

    asyncio.run(scenario())


def test_no_answer_in_time_is_504_and_a_late_answer_is_ignored():
    async def scenario() -> None:
        server = child_server()
        router = MethodRouter(server)
        child = connect(server, RecordingChild("d"))
        caller = Caller()
        router.invoke("d", "slow", b"{}", 0.1, caller)
        status, payload = await asyncio.wait_for(caller.first, 10)
        assert status == STATUS_TIMEOUT and b"did not answer slow" in payload
        assert router.answer("d", rid_of(child), 200, b"{}") is False
        assert caller.replies == [(status, payload)] and router.timed_out == 1

    asyncio.run(scenario())


def test_a_device_that_leaves_answers_504_for_its_own_calls_only():
    async def scenario() -> None:
        server = child_server()
        router = MethodRouter(server)
        leaving = connect(server, RecordingChild("l"))
        staying = connect(server, RecordingChild("s"))
        to_leaving, to_staying = Caller(), Caller()
        router.invoke("l", "m", b"{}", 30, to_leaving)
        router.invoke("s", "m", b"{}", 30, to_staying)
        router.device_gone("l")
        assert [s for s, _ in to_leaving.replies] == [STATUS_TIMEOUT]
        assert to_staying.replies == []
        assert router.answer("s", rid_of(staying), 200, b"ok") is True
        assert to_staying.replies == [(200, b"ok")]
        assert leaving.delivered and router.timed_out == 1

    asyncio.run(scenario())


def test_close_drops_every_call_without_answering():
    async def scenario() -> None:
        server = child_server()
        router = MethodRouter(server)
        child = connect(server, RecordingChild("d"))
        caller = Caller()
        router.invoke("d", "m", b"{}", 0.1, caller)
        router.close()
        assert router.answer("d", rid_of(child), 200, b"{}") is False
        # a call made after close() with the same timeout times out after the first one would
        # have: once its 504 is in, a timer close() had not cancelled would have fired too
        later = Caller()
        router.invoke("d", "m", b"{}", 0.1, later)
        assert (await asyncio.wait_for(later.first, 10))[0] == STATUS_TIMEOUT
        assert caller.replies == []

    asyncio.run(scenario())
