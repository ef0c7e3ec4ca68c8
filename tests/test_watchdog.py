"""dynconv/watchdog.py: quiet while ticked; a stall's stage, duration and every thread's stack, once per period
while it lasts; with ``exit_code`` the process ends."""
from __future__ import annotations

import io
import time

from dynconv import watchdog
from dynconv.watchdog import Watchdog

PERIOD = 0.5


def _sleeping_in_the_test(seconds: float) -> None:
    time.sleep(seconds)


def test_a_ticked_watchdog_stays_quiet():
    out = io.StringIO()
    with Watchdog(PERIOD, stage="training", stream=out) as wd:
        for _ in range(15):
            time.sleep(PERIOD / 5)
            wd.tick()
    assert out.getvalue() == ""


def test_a_stall_dumps_every_thread_s_stack_once_per_period(tmp_path):
    """A real file: faulthandler writes to its descriptor. One dump within 2 periods, naming the stage and
    the sleeping frame; another after a further period; none once ticks resume."""
    path = tmp_path / "stderr"
    with open(path, "w+") as f, Watchdog(PERIOD, stage="start", stream=f) as wd:
        wd.tick("bare loop, compile off")
        _sleeping_in_the_test(0.9)  # < 2 periods: the second dump is due 1 period after the first
        text = path.read_text()
        assert text.count("watchdog: no progress for") == 1, text
        assert "in stage 'bare loop, compile off'" in text and "(still waiting)" in text
        assert "most recent call first" in text and "in _sleeping_in_the_test" in text  # faulthandler's stack
        _sleeping_in_the_test(0.5)  # 1.4 s in all: the second dump (>= 1.0 s), not yet the third (>= 1.5 s)
        assert path.read_text().count("watchdog: no progress for") == 2
        for _ in range(8):  # progress again: quiet
            wd.tick()
            time.sleep(PERIOD / 4)
        assert path.read_text().count("watchdog: no progress for") == 2


def test_a_stream_without_a_descriptor_gets_python_s_stacks():
    out = io.StringIO()
    with Watchdog(PERIOD, stage="s", stream=out):
        _sleeping_in_the_test(0.9)
    assert "no progress for" in out.getvalue() and "_sleeping_in_the_test" in out.getvalue()


def test_exit_on_stall_ends_the_process_with_the_code(monkeypatch):
    """``os._exit`` (the main thread may be stuck in C code): replaced here, so the test process lives."""
    codes = []
    monkeypatch.setattr(watchdog.os, "_exit", codes.append)
    out = io.StringIO()
    with Watchdog(PERIOD, stage="dynconv train", exit_code=3, stream=out):
        _sleeping_in_the_test(0.9)
    assert codes == [3]
    assert "exiting with status 3" in out.getvalue()


def test_zero_seconds_is_no_watchdog():
    out = io.StringIO()
    with Watchdog(0, stream=out) as wd:
        time.sleep(0.2)
    assert out.getvalue() == "" and not wd._thread.is_alive()
