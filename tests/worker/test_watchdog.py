"""The upload watchdog fires each armed action at its deadline, whatever order they were armed in."""

from __future__ import annotations

import threading
import time

from worker.node.admission import Watchdog


def test_an_earlier_deadline_armed_after_a_later_one__still_fires_on_time() -> None:
    dog = Watchdog()
    late, early = threading.Event(), threading.Event()
    dog.arm(60.0, late.set)
    t0 = time.monotonic()
    dog.arm(0.2, early.set)
    assert early.wait(10.0)
    assert time.monotonic() - t0 >= 0.2 and not late.is_set()


def test_a_later_deadline__does_not_delay_nor_cancel_the_earlier_one_and_disarm_holds() -> None:
    dog = Watchdog()
    first, second, cancelled = threading.Event(), threading.Event(), threading.Event()
    dog.arm(0.2, first.set)
    ident = dog.arm(0.3, cancelled.set)
    dog.arm(0.4, second.set)
    dog.disarm(ident)
    assert first.wait(10.0) and second.wait(10.0)
    time.sleep(0.2)
    assert not cancelled.is_set()
