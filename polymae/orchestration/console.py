"""The console of ``polymae run``: PolyMAE's own lines and one progress line each for the scan
and for training; everything else (Ray's workers and controller, Ray Data, MLflow, native
libraries) goes to ``<run folder>/logs/run.log``.

Why the file descriptors and not logging handlers: Ray's workers reach the driver as printed
lines, Ray's C++ core and decoders write to fd 2 directly, and MLflow and Ray configure their
own handlers; pointing fds 1 and 2 at the log catches all of them. PolyMAE's lines go to a
copy of the original stdout (and into the log too, so the log tells the whole story).
``--verbose`` leaves the descriptors alone: everything streams live as before.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import TextIO

LOG_NAME = "logs/run.log"  # inside the run folder


class Console:
    """Where PolyMAE's own lines go. Until :meth:`capture`, that is plain stdout."""

    def __init__(self) -> None:
        self.stream: TextIO = sys.stdout
        self.log_path: Path | None = None
        self._saved: tuple[int, int] | None = None  # the original fds 1 and 2 while captured
        self.open_line = False  # a progress line is drawn on the terminal without its newline

    @property
    def is_tty(self) -> bool:
        return self._saved is not None and os.isatty(self._saved[0])

    def say(self, text: str) -> None:
        """One line on the console (and in the log while captured)."""
        self._write(("\n" if self.open_line else "") + text + "\n")
        self.open_line = False
        if self._saved is not None:
            print(text, flush=True)  # fd 1 is the log now

    def _write(self, text: str) -> None:
        stream = self.stream if self._saved is not None else sys.stdout
        stream.write(text)
        stream.flush()

    def capture(self, log_path: Path) -> None:
        """Point fds 1 and 2 at ``log_path`` (appending); PolyMAE's lines keep the terminal."""
        if self._saved is not None:
            return
        log_path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        self.stream = os.fdopen(os.dup(self._saved[0]), "w", buffering=1)
        with open(log_path, "a") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
        self.log_path = log_path
        # PolyMAE's own warnings on the driver (a crashed decoder, MLflow unreachable) stay visible
        handler = logging.StreamHandler(self.stream)
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter("[polymae] %(levelname)s: %(message)s"))
        handler.set_name("polymae-console")
        logging.getLogger("polymae").addHandler(handler)

    def move_log(self, log_path: Path) -> None:
        """The log file moves (same file system; the open descriptors follow the file)."""
        if self.log_path is None or self.log_path == log_path:
            return
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if log_path.exists():  # a resumed run: keep the earlier invocation's log beside it
            stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(log_path.stat().st_mtime))
            log_path.rename(log_path.with_name(f"run-{stamp}.log"))
        os.replace(self.log_path, log_path)
        self.log_path = log_path

    def release(self) -> None:
        """Give fds 1 and 2 back to the terminal."""
        if self._saved is None:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self._saved = None
        self.stream.close()
        self.stream = sys.stdout
        root = logging.getLogger("polymae")
        root.handlers = [h for h in root.handlers if h.get_name() != "polymae-console"]


CONSOLE = Console()


def say(text: str) -> None:
    """A ``[polymae]`` line for the user."""
    CONSOLE.say(f"[polymae] {text}")


class Progress:
    """One progress line: redrawn in place on a terminal (carriage return, no escape codes);
    elsewhere a plain line at every ``every`` fraction of the total and at the end."""

    def __init__(self, label: str, total: int, every: float = 0.1) -> None:
        self.label, self.total, self.every = label, max(1, total), every
        self.start = time.monotonic()
        self._printed = -1  # the last fraction step printed as a plain line
        self._width = 0
        self.done = 0
        self.text = ""

    def update(self, done: int, detail: str = "", total: int | None = None) -> None:
        self.total = max(1, total) if total is not None else self.total
        self.done = min(done, self.total)
        fraction = self.done / self.total
        elapsed = time.monotonic() - self.start
        eta = f"  ETA {_duration(elapsed / fraction - elapsed)}" if 0 < fraction < 1 else ""
        text = f"[polymae] {self.label} {self.done}/{self.total} ({fraction:.0%}){detail and '  ' + detail}{eta}"
        self.text = text
        if CONSOLE.is_tty:
            CONSOLE._write("\r" + text.ljust(self._width))
            CONSOLE.open_line, self._width = True, len(text)
            return
        step = int(fraction / self.every + 1e-9)
        if step > self._printed:
            self._printed = step
            CONSOLE.say(text)

    def close(self) -> None:
        """End the line (on a terminal the last redraw stays, and goes into the log)."""
        if CONSOLE.is_tty and CONSOLE.open_line:
            CONSOLE._write("\n")
            CONSOLE.open_line = False
            print(self.text, flush=True)


def failure_reason(err: BaseException) -> str:
    """The one line that says what failed: a worker's own error rather than Ray's wrapping of it
    (Ray Train's worker failures, its controller's failure; a task error's last line)."""
    failures = getattr(err, "worker_failures", None)
    if failures:
        err = failures[min(failures)]
    err = getattr(err, "controller_failure", None) or err
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if len(lines) > 1:  # a wrapped traceback: its last line is the original "Type: message"
        return lines[-1]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
