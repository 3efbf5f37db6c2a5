"""The run console (no Ray): captured fds 1/2 land in the log, PolyMAE's lines on the real
stdout, progress as plain lines off a terminal and redrawn with a bare \\r on one."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import textwrap
from pathlib import Path

from polymae.orchestration.console import failure_reason

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import logging, os, sys
    from pathlib import Path
    from polymae.orchestration.console import CONSOLE, Progress, say

    pending = Path(sys.argv[1]) / ".pending.log"
    CONSOLE.capture(pending)
    os.write(1, b"stray fd1 from a native library\\n")
    os.write(2, b"stray fd2 from a native library\\n")
    print("a printed line from Ray")
    print("\\x1b[36m(RayTrainWorker pid=1)\\x1b[0m Failed to query Ray Train Controller", file=sys.stderr)
    logging.getLogger("polymae.pipelines.scan").warning("a decoder crashed")
    say("hello from polymae")
    bar = Progress("scan: files", 100)
    for done in range(1, 101):
        bar.update(done)
    bar.close()
    CONSOLE.move_log(Path(sys.argv[1]) / "run" / "logs" / "run.log")
    print("after the move")
    say("bye")
    CONSOLE.release()
    print("released: plain stdout again")
""")


def _run(tmp_path: Path, tty: bool) -> tuple[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", SCRIPT, str(tmp_path)]
    if not tty:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=True)
        assert out.stderr == ""  # fd 2 went into the log too
        return out.stdout, (tmp_path / "run" / "logs" / "run.log").read_text()
    leader, follower = pty.openpty()
    proc = subprocess.Popen(cmd, env=env, stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=60) == 0
    os.close(leader)
    return b"".join(chunks).decode(), (tmp_path / "run" / "logs" / "run.log").read_text()


def test_captured_console_off_a_terminal(tmp_path):
    stdout, log = _run(tmp_path, tty=False)
    # stray writes to fds 1 and 2 (and Python's prints) are in the log, not on the console
    for text in ("stray fd1", "stray fd2", "a printed line from Ray", "Failed to query", "after the move"):
        assert text in log and text not in stdout
    # PolyMAE's own lines and warnings are on the saved stdout (and in the log)
    assert "[polymae] hello from polymae\n" in stdout and "[polymae] hello from polymae" in log
    assert "[polymae] WARNING: a decoder crashed" in stdout
    assert stdout.rstrip("\n").endswith("released: plain stdout again")
    # progress: a few plain lines, no carriage returns, no escape codes
    progress = [line for line in stdout.splitlines() if "scan: files" in line]
    assert 2 <= len(progress) <= 11, progress
    assert progress[-1] == "[polymae] scan: files 100/100 (100%)"
    assert "\r" not in stdout and "\x1b[" not in stdout
    assert not (tmp_path / ".pending.log").exists()  # moved, not copied


def test_captured_console_on_a_terminal(tmp_path):
    stdout, log = _run(tmp_path, tty=True)
    assert "stray fd1" not in stdout and "stray fd2" in log
    assert "\r[polymae] scan: files 50/100 (50%)" in stdout  # redrawn in place
    assert "\x1b[" not in stdout  # a carriage return, never an escape code
    assert log.count("scan: files") == 1 and "scan: files 100/100 (100%)" in log  # the final state only


class WorkerGroupError(RuntimeError):  # the shape of Ray Train V2's worker-group failure
    def __init__(self, failures: dict[int, BaseException]) -> None:
        super().__init__("Training failed due to worker errors:\n[Rank 0]\nTraceback ...")
        self.worker_failures = failures


def test_failure_reason_names_the_workers_own_error():
    wrapped = RuntimeError("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                           "FloatingPointError: non-finite loss at step 7")
    assert failure_reason(WorkerGroupError({1: ValueError("b"), 0: wrapped})) == \
        "FloatingPointError: non-finite loss at step 7"
    assert failure_reason(RuntimeError("no usable input files")) == "RuntimeError: no usable input files"
    assert failure_reason(KeyError()) == "KeyError"
