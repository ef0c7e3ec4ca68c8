"""A stall watchdog: when nothing calls :meth:`Watchdog.tick` for ``seconds``, write one line saying which stage
stalled and for how long, then every thread's stack (``faulthandler``) to ``stream``, and again after every
further ``seconds`` without progress; with ``exit_code`` end the process instead (``os._exit``: the main thread
may be stuck in C code, where no exception reaches it). Standard library only::

    with Watchdog(300, stage="training") as wd:
        for batch in loader:
            step(batch)
            wd.tick()
"""
from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
import traceback


class Watchdog:
    def __init__(self, seconds: float, stage: str = "", exit_code: int | None = None, stream=None):
        self.seconds, self.stage, self.exit_code, self.stream = seconds, stage, exit_code, stream
        self.last = self._dumped = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="dynconv-watchdog", daemon=True)

    def tick(self, stage: str | None = None) -> None:
        """Progress was made (a step, a batch, an epoch); ``stage`` names what runs from now on."""
        self.last = time.monotonic()
        if stage is not None:
            self.stage = stage

    def __enter__(self) -> Watchdog:
        self.tick()
        if self.seconds > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.seconds / 4)):
            now = time.monotonic()
            if now - self.last >= self.seconds and now - max(self.last, self._dumped) >= self.seconds:
                self._dumped = now
                self.dump(now - self.last)

    def dump(self, idle: float) -> None:
        out = self.stream or sys.stderr
        end = f"exiting with status {self.exit_code}" if self.exit_code is not None else "still waiting"
        out.write(f"watchdog: no progress for {idle:.0f} s in stage '{self.stage}'; every thread's stack "
                  f"follows ({end})\n")
        out.flush()
        try:
            faulthandler.dump_traceback(file=out, all_threads=True)
        except (AttributeError, ValueError, OSError):  # a stream without a file descriptor (a test's capture)
            for ident, frame in sys._current_frames().items():
                out.write(f"Thread 0x{ident:x}:\n" + "".join(traceback.format_stack(frame)))
        out.flush()
        if self.exit_code is not None:
            sys.stdout.flush()
            os._exit(self.exit_code)
