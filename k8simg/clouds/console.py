"""A node's serial console, as every cloud reads it: its text (ANSI stripped), the verdict on
its first boot (its login prompt, or Ignition failing), the lines that say why, and the wait
for a set of nodes to boot that :meth:`~k8simg.clouds.base.Cloud.wait_ready` runs on each
cloud (the local cloud reads QEMU's console file, OpenStack Nova's console log)."""

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from k8simg.clouds.base import NodeFailed

# The console lines that say why a boot failed (Ignition's own messages, systemd's, the
# kernel's), shown with a node's failure.
FAILURE = re.compile(r"(k8simg: first boot failed|Failed to start .*[Ii]gnition|"
                     r"Reached target emergency\.target|You are in emergency mode|Kernel panic)")
RELEVANT = re.compile(r"(\[FAILED\]|\[DEPEND\]|k8simg: failed unit|[Ee]mergency mode|Kernel panic|"
                      r"(?i:error|failed|invalid|not valid))")
# Ignition also tries the metadata service, which a config-drive node has no route to.
NOISE = re.compile(r"GET error|attempt #\d|firmware|regulatory|TLB invalidation")
ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[@-Z\\-_])")  # CSI sequences and ESC M & co.
REPORT_END = "k8simg: end of Ignition's messages"
REPORT_GRACE_S = 90  # for the image's report to follow systemd's [FAILED] line


def clean(text: str) -> str:
    """Console text with ANSI escapes and carriage returns removed."""
    return ANSI.sub("", text).replace("\r", "")


def console_text(path: Path, offset: int = 0) -> str:
    """The console log from byte ``offset`` on (where a boot began), cleaned; empty when there
    is no log yet."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return ""
    return clean(data.decode(errors="replace"))


def failure_lines(text: str, limit: int = 25) -> list[str]:
    """The console lines that matter for a failed boot: Ignition's, systemd's failures, the
    emergency shell, a panic; the last ``limit`` of them."""
    lines = [ln.strip() for ln in text.splitlines()
             if RELEVANT.search(ln) and not NOISE.search(ln)]
    return lines[-limit:]


def verdict(text: str, hostname: str) -> str | None:
    """``failed`` when the console shows the first boot failing, ``ready`` when it shows the
    login prompt with the node's own hostname (Ignition ran and set it); whichever came last
    (a tail of Nova's console log may hold an earlier boot); None: still booting."""
    failed = max((m.start() for m in FAILURE.finditer(text)), default=-1)
    ready = text.rfind(f"{hostname} login:")
    if failed < 0 and ready < 0:
        return None
    return "failed" if failed > ready else "ready"


def failure_report(why: str, where: str, text: str) -> str:
    """``why``, where the whole console is, and its lines that matter (its last lines when
    none stand out)."""
    lines = failure_lines(text) or [ln for ln in text.splitlines() if ln.strip()][-15:]
    return (f"{why}; {where}:\n"
            + ("\n".join(f"    | {ln}" for ln in lines) or "    (nothing on it)"))


@dataclass(frozen=True)
class Boot:
    """One look at a booting node.

    :param text: its console since this boot (on OpenStack, the tail Nova gives).
    :param running: whether its machine still runs (QEMU alive; the server ACTIVE).
    :param settled: the verdict recorded by an earlier look (``ready`` or ``failed``), if any.
    :param stopped: why it does not run, said when ``running`` is false.
    """

    text: str
    running: bool = True
    settled: str | None = None
    stopped: str = "its machine stopped"


def wait_boots(names: list[str], look: Callable[[str], Boot], *,
               settle: Callable[[str, str, str], None], where: Callable[[str], str],
               timeout: float, poll: float = 2.0, progress: Callable[[str], None] = lambda _m: None,
               clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep,
               look_all: Callable[[list[str]], list[Boot]] | None = None) -> None:
    """Wait until every node of ``names`` has booted, each looked at every ``poll`` seconds.

    A node is done once its console shows its login prompt (``settle(name, "ready", "")``) or
    its first boot failing (``settle(name, "failed", why)``, after a grace for the image's
    report of Ignition's messages to follow systemd's line), or when its machine stops (said,
    not settled: a stopped machine is started again, not replaced).

    :param look: one look at a node.
    :param look_all: a look at each of several nodes, in their order (a cloud's API looks at
        them at once); by default ``look`` at one after another.
    :param where: where the operator reads a node's whole console (a path, a command).
    :raises NodeFailed: naming each node that failed, stopped, or showed no verdict within
        ``timeout`` seconds, with its console's lines that matter.
    """
    pending = list(names)
    if pending:
        progress(f"waiting for {len(pending)} node(s)' first boot (up to {timeout:.0f} s)")
    failures: list[tuple[str, str]] = []
    deadline = clock() + timeout
    failed_seen: dict[str, float] = {}
    while pending:
        looks = dict(zip(pending, (look_all or (lambda ns: [look(n) for n in ns]))(pending),
                         strict=True))
        for name, boot in looks.items():
            state = boot.settled or verdict(boot.text, name)
            if state == "ready":
                pending.remove(name)
                if boot.settled is None:
                    settle(name, "ready", "")
                continue
            if state is None and boot.running:
                continue
            if state == "failed" and boot.settled is None and REPORT_END not in boot.text \
                    and boot.running:
                # systemd's [FAILED] line comes first; the image's report of Ignition's own
                # messages follows it: wait for that, briefly.
                if clock() - failed_seen.setdefault(name, clock()) < REPORT_GRACE_S:
                    continue
            pending.remove(name)
            why = "its first boot failed" if state == "failed" else boot.stopped
            failures.append((name, failure_report(why, where(name), boot.text)))
            if boot.settled is None and state == "failed":
                settle(name, "failed", why)
        if pending and clock() > deadline:
            for name in pending:
                failures.append((name, failure_report(
                    f"no login prompt after {timeout:.0f} s", where(name), look(name).text)))
            break
        if pending:
            sleep(poll)
    if failures:
        raise NodeFailed(failures)
