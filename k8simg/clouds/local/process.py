"""The local cloud's processes (QEMU, dnsmasq, haproxy), recorded in the cluster directory.

Each daemon writes its own PID file; k8simg records the PID together with the process's start
time (``/proc/<pid>/stat`` field 22), so a PID the kernel has since reused for an unrelated
process is never taken for ours, and never signalled. Each record is bound to the cluster's
UID and directory, and a process counts as the record's only while its command line names
that directory: a copy of the cluster directory (its ``processes.json`` included) or a new
cluster made in the place of a deleted one never stops the original's processes.
"""

import ctypes
import fcntl
import json
import os
import signal
import struct
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from k8simg.errors import K8simgError
from k8simg.fsutil import atomic_write


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is parenthesised and may hold spaces: split after it.
    return text[text.rindex(")") + 2:].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None when it does not exist."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def cpu_seconds(pid: int) -> float | None:
    """The CPU time (user + system, every thread) the process has used, in seconds, or None
    when it does not exist."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else None


def command_line(pid: int) -> str | None:
    """The process's command line (arguments joined by spaces), or None when it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def running(pid: int, started: int | None = None) -> bool:
    """Whether ``pid`` is a live process (not a zombie), and the same one that started at
    ``started`` when that is given."""
    fields = _stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return started is None or int(fields[19]) == started


# sched_setattr(2)'s number where k8simg's local cloud runs (it is not in Python's os module).
_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}
_SCHED_FLAG_KEEP_POLICY = 0x08


def lengthen_slice(pid: int, ms: float) -> int:
    """Ask the scheduler for ``ms`` milliseconds of CPU per turn for every thread of ``pid``
    (``sched_setattr``'s ``sched_runtime``: a slice request to the EEVDF scheduler of Linux
    6.12 and later, which otherwise hands out a few milliseconds). Threads the process starts
    later inherit it. The thread's policy and nice level stay as they were (an operator's
    ``nice`` or ``chrt -b`` is kept).

    For guests under software emulation sharing fewer cores than there are guests: each switch
    from one QEMU to another costs the next the CPU caches its translated code had warmed.

    :returns: how many threads the kernel accepted it for (0 where the call is refused or
        unknown: the request is an optimisation, never a failure). Kernels before 6.12 accept
        the call and ignore the slice.
    """
    nr = _SCHED_SETATTR.get(os.uname().machine)
    if nr is None:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    done: set[int] = set()
    # A thread started while we go through the others is picked up by the next listing
    # (or inherits the slice from its parent thread): a few passes until nothing is new.
    for _ in range(3):
        try:
            threads = {int(t) for t in os.listdir(f"/proc/{pid}/task")} - done
        except OSError:
            break
        if not threads:
            break
        for tid in threads:
            try:
                nice = os.getpriority(os.PRIO_PROCESS, tid)  # Linux: the thread's own
            except OSError:
                continue
            # struct sched_attr, its first version (48 bytes): size, policy, flags, nice,
            # priority, runtime, deadline, period. KEEP_POLICY (Linux 5.3) leaves the policy;
            # the nice level is set from the field, so it gets the thread's own. Not
            # KEEP_PARAMS: with it the kernel skips the slice too.
            attr = ctypes.create_string_buffer(struct.pack(
                "IIQiIQQQ", 48, os.SCHED_OTHER, _SCHED_FLAG_KEEP_POLICY, nice, 0,
                int(ms * 1e6), 0, 0))
            if libc.syscall(nr, tid, attr, 0) == 0:
                done.add(tid)
    return len(done)


@dataclass(frozen=True)
class Recorded:
    """One process the local cloud started."""

    key: str  # e.g. "dnsmasq", "haproxy", "qemu:<node>"
    pid: int
    started: int
    command: str
    owner: str = ""  # the cluster's UID and directory, as the table that recorded it has them
    home: str = ""  # a directory the process's command line names ("": not checked)

    @property
    def alive(self) -> bool:
        """Whether the process still runs (the same one: a reused PID is not it, nor a
        process whose command line does not name the record's directory)."""
        if not running(self.pid, self.started):
            return False
        return not self.home or f"{self.home}/" in (command_line(self.pid) or "")


class ProcessTable:
    """``<cluster>/local/processes.json``: every process the local cloud started, by key.

    Updates are read-modify-write under a lock (threads of one deploy start VMs at once, and
    another k8simg process may be looking at the same cluster).
    """

    _threads = threading.Lock()

    def __init__(self, path: Path, owner: Callable[[], str] | str = "", home: Path | None = None):
        """:param owner: the cluster's identity (its UID and directory); records of another
            are not this table's.
        :param home: the directory each recorded process's command line must name."""
        self.path = path
        self._owner = owner
        self.home = str(home) if home is not None else ""

    @property
    def owner(self) -> str:
        return self._owner() if callable(self._owner) else self._owner

    @contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._threads, open(self.path.with_name(self.path.name + ".lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def all(self) -> dict[str, Recorded]:
        """Every recorded process by key; none before anything was recorded.

        :raises K8simgError: when the file is not valid JSON.
        """
        try:
            data = json.loads(self.path.read_text())
            owner = self.owner
            return {k: Recorded(k, int(v["pid"]), int(v["started"]), str(v["command"]),
                                owner, self.home)
                    # a record from before owners (or from before the cluster had a UID) is
                    # taken as this table's: its process must still name this directory
                    for k, v in data.items() if v.get("owner") in (None, "", owner)}
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise K8simgError(f"{self.path}: not valid JSON ({e})") from None
        except (KeyError, TypeError, AttributeError) as e:
            raise K8simgError(f"{self.path}: not a process table ({e!r})") from None

    def get(self, key: str) -> Recorded | None:
        """The process recorded as ``key``, or None (running or not: see :attr:`Recorded.alive`)."""
        return self.all().get(key)

    def _save(self, table: dict[str, Recorded]) -> None:
        atomic_write(self.path, json.dumps(
            {k: {"pid": r.pid, "started": r.started, "command": r.command, "owner": r.owner}
             for k, r in sorted(table.items())}, indent=2) + "\n", 0o600)

    def record(self, key: str, pid_file: Path, command: str, timeout: float = 10) -> Recorded:
        """Record the daemon whose PID file is ``pid_file`` (waiting briefly for it).

        :raises K8simgError: when the PID file does not appear or names no live process.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                pid = int(pid_file.read_text().split()[0])
            except (FileNotFoundError, ValueError, IndexError):
                pid = None
            if pid is not None and (started := start_time(pid)) is not None:
                break
            if time.monotonic() > deadline:
                raise K8simgError(f"{command}: no running process behind {pid_file}")
            time.sleep(0.05)
        rec = Recorded(key, pid, started, command, self.owner, self.home)
        with self._locked():
            table = self.all()
            table[key] = rec
            self._save(table)
        return rec

    def forget(self, key: str) -> None:
        """Drop ``key`` from the table; the process itself is not signalled."""
        with self._locked():
            table = self.all()
            if table.pop(key, None) is not None:
                self._save(table)

    def stop(self, key: str, timeout: float = 15) -> bool:
        """Stop the recorded process ``key`` (SIGTERM, then SIGKILL) and forget it.

        :returns: whether a live process was stopped.
        """
        rec = self.get(key)
        if rec is None:
            return False
        was_alive = rec.alive
        if was_alive:
            terminate(rec.pid, rec.started, timeout)
        self.forget(key)
        return was_alive


def terminate(pid: int, started: int | None, timeout: float = 15) -> None:
    """SIGTERM ``pid``, SIGKILL it if it is still there after ``timeout`` seconds."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
        if not running(pid, started):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and running(pid, started):
            time.sleep(0.05)
    if running(pid, started):
        raise K8simgError(f"process {pid} did not stop after SIGKILL")
