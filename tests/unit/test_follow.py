"""The follower's catch-up: when is a view complete enough to evaluate from."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from nats.js.errors import NoStreamResponseError, NotFoundError

from services.domain.follow import ViewFollower
from services.domain.view import View


@dataclass
class _State:
    messages: int
    last_seq: int
    failures: int = 0  # how many more times the stream cannot be asked (no leader, say)


class _FakeJetStream:
    def __init__(self, state: _State) -> None:
        self.state = state

    async def get_last_msg(self, stream: str, subject: str) -> Any:
        if self.state.failures:
            self.state.failures -= 1
            raise NoStreamResponseError
        if self.state.messages == 0:
            raise NotFoundError
        return type("Msg", (), {"seq": self.state.last_seq})()


class _FakeBus:
    def __init__(self, state: _State) -> None:
        self.js = _FakeJetStream(state)


async def _read(follower: ViewFollower, seq: int, behind: int) -> None:
    """What ``run`` does for one message, without decoding anything."""
    follower.view.seq, follower.behind = seq, behind
    async with follower._advanced:
        follower._advanced.notify_all()


def test_catch_up_waits_for_the_tail_not_for_the_last_sequence_it_first_saw() -> None:
    # The stream held seqs 1-2; then object A (seq 1) changed: seq 1 is gone, A's news is seq 3.
    # A view that has read seq 2 lacks A: it is complete only once it has read seq 3.
    async def scenario() -> tuple[bool, bool]:
        state = _State(messages=2, last_seq=2)
        follower = ViewFollower(_FakeBus(state), View())  # type: ignore[arg-type]
        catching_up = asyncio.create_task(follower.catch_up())
        await asyncio.sleep(0.05)
        state.last_seq = 3  # A changed while the view was being read
        await _read(follower, 2, behind=1)
        await asyncio.sleep(0.1)
        done_without_a = catching_up.done()
        await _read(follower, 3, behind=0)
        await asyncio.wait_for(catching_up, 3)
        return done_without_a, catching_up.done()

    done_without_a, done_with_a = asyncio.run(scenario())
    assert not done_without_a
    assert done_with_a


def test_catch_up_ends_on_an_empty_stream_and_when_the_last_messages_are_gone() -> None:
    async def scenario(state: _State, seq: int) -> None:
        follower = ViewFollower(_FakeBus(state), View())  # type: ignore[arg-type]
        follower.view.seq, follower.behind = seq, 5  # five more were there when seq was read
        await asyncio.wait_for(follower.catch_up(), 1)

    asyncio.run(scenario(_State(messages=0, last_seq=9), seq=0))
    asyncio.run(scenario(_State(messages=4, last_seq=7), seq=7))  # what followed 7 expired meanwhile


def test_catch_up_outlasts_a_stream_that_cannot_be_asked_for_a_while() -> None:
    # A node of the cluster lost: the stream has no leader for a few seconds. Catching up goes on
    # asking (a catch-up that ended with the error left its partition unevaluated for good).
    async def scenario() -> None:
        state = _State(messages=3, last_seq=3, failures=3)
        follower = ViewFollower(_FakeBus(state), View())  # type: ignore[arg-type]
        catching_up = asyncio.create_task(follower.catch_up())
        await _read(follower, 3, behind=1)
        await asyncio.wait_for(catching_up, 10)
        assert state.failures == 0

    asyncio.run(scenario())
