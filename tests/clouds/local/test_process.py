"""What the local cloud's process table reads from /proc about a process it did not start."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from k8simg.clouds.local.process import cpu_seconds, lengthen_slice


def slice_ns(pid: int, tid: int | None = None) -> int | None:
    """The scheduler's slice of a task, from its sched file (None where the kernel has none)."""
    try:
        sched = Path(f"/proc/{pid}/task/{tid or pid}/sched").read_text()
    except OSError:
        return None
    m = re.search(r"^se\.slice\s*:\s*(\d+)", sched, re.M)
    return int(m.group(1)) if m else None


def test_cpu_seconds_counts_a_process_threads_and_says_none_once_it_is_gone():
    # a child that burns about 0.5 s of CPU in a second thread, then waits to be read
    burn = ("import threading, time\n"
            "def spin():\n"
            "    end = time.process_time() + 0.5\n"
            "    while time.process_time() < end: pass\n"
            "t = threading.Thread(target=spin); t.start(); t.join()\n"
            "print('done', flush=True); input()\n")
    p = subprocess.Popen([sys.executable, "-c", burn], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "done\n"
        used = cpu_seconds(p.pid)
        assert used is not None and 0.45 <= used < 5, used
    finally:
        p.kill()
        p.wait()
    assert cpu_seconds(p.pid) is None


def test_a_longer_slice_reaches_every_thread_and_the_threads_started_after():
    if slice_ns(os.getpid()) is None:
        pytest.skip("this kernel's sched files give no slice (they do from Linux 6.14, and "
                    "6.12's and 6.13's stable releases)")
    # a child with one thread already running; on a line from us it starts another and prints
    # that thread's id: QEMU starts I/O threads long after k8simg asked for the slice
    child = ("import threading, time\n"
             "ev = threading.Event(); threading.Thread(target=ev.wait, daemon=True).start()\n"
             "print('ready', flush=True); input()\n"
             "def later(): print(threading.get_native_id(), flush=True); ev.wait()\n"
             "threading.Thread(target=later, daemon=True).start(); input()\n")
    # under nice 7 and SCHED_BATCH (an operator's `nice`, `chrt -b`): both are kept
    p = subprocess.Popen(["nice", "-n", "7", "chrt", "--batch", "0", sys.executable, "-c", child],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "ready\n"
        before = {int(t.name) for t in Path(f"/proc/{p.pid}/task").iterdir()}
        assert len(before) >= 2
        assert all(slice_ns(p.pid, t) != 37_000_000 for t in before)
        assert lengthen_slice(p.pid, 37) == len(before)
        assert {slice_ns(p.pid, t) for t in before} == {37_000_000}
        assert {os.getpriority(os.PRIO_PROCESS, t) for t in before} == {7}
        assert {os.sched_getscheduler(t) for t in before} == {os.SCHED_BATCH}
        p.stdin.write("\n")
        p.stdin.flush()
        later = int(p.stdout.readline())
        assert later not in before
        assert slice_ns(p.pid, later) == 37_000_000
    finally:
        p.kill()
        p.wait()
    assert lengthen_slice(p.pid, 37) == 0  # gone: nothing to ask, and no error
