"""The main loop's queue: many threads put, the loop takes; calls and waits are bounded."""

from __future__ import annotations

import os
import signal
import threading
from contextlib import ExitStack

import pytest

from bench_agent.inbox import Call, Inbox, ReloadRequested, StopRequested, TamperChanged
from bench_agent.link.mqtt import Acked
from bench_agent.local.control import ControlError


def test_take_hands_over_everything_queued_in_order_and_waits_only_for_the_first() -> None:
    inbox = Inbox()
    assert list(inbox.take(0)) == []
    for item in (TamperChanged(True), ReloadRequested(), TamperChanged(False)):
        inbox.put(item)
    assert list(inbox.take(0.01)) == [TamperChanged(True), ReloadRequested(), TamperChanged(False)]
    later = threading.Timer(0.05, inbox.put, (StopRequested("test"),))
    later.start()
    assert list(inbox.take(5)) == [StopRequested("test")]  # woken by the put, not the timeout
    later.join()


def test_a_call_runs_on_the_loop_and_hands_back_its_value_or_its_exception() -> None:
    inbox = Inbox()

    def loop() -> None:
        for item in inbox.take(5):
            assert isinstance(item, Call)
            item.run()

    def boom() -> int:
        raise ValueError("bad")

    for fn, expected in ((lambda: 42, 42), (boom, ValueError)):
        runner = threading.Thread(target=loop)
        runner.start()
        if expected is ValueError:
            with pytest.raises(ValueError, match="bad"):
                inbox.call(fn, 5)
        else:
            assert inbox.call(fn, 5) == expected
        runner.join()


def test_a_loop_that_does_not_answer_is_busy_and_a_stopping_one_refuses() -> None:
    inbox = Inbox()
    with pytest.raises(ControlError) as busy:
        inbox.call(lambda: 1, 0.05)
    assert busy.value.code == "busy"
    inbox.closed_to_calls = True
    with pytest.raises(ControlError) as stopping:
        inbox.call(lambda: 1, 5)
    assert stopping.value.code == "stopping"


def test_a_call_never_raises_on_the_loop() -> None:
    failed = Call(lambda: 1 / 0)
    failed.run()
    assert failed.done.is_set() and isinstance(failed.failure[0], ZeroDivisionError)


def test_wait_for_drops_other_items_and_gives_up_at_its_deadline() -> None:
    inbox = Inbox()
    for item in (TamperChanged(True), Acked(1, 7), Acked(1, 8)):
        inbox.put(item)
    assert inbox.wait_for(lambda item: item == Acked(1, 8), 1)
    inbox.put(Acked(1, 7))
    assert not inbox.wait_for(lambda item: item == Acked(1, 9), 0.05)
    assert list(inbox.take(0)) == []  # what it saw on the way is gone: the agent stops


def test_signals_become_items_and_the_old_handlers_come_back() -> None:
    inbox = Inbox()
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    with ExitStack() as stack:
        inbox.install_signal_handlers(stack)
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGTERM)
        assert list(inbox.take(1)) == [ReloadRequested(), StopRequested("SIGTERM")]
    assert {sig: signal.getsignal(sig) for sig in before} == before
