"""A local node's serial console: its text (ANSI stripped), whether it shows a failed boot,
and the lines that say why."""

import re
from pathlib import Path

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

def console_text(path: Path, offset: int = 0) -> str:
    """The console log from byte ``offset`` on (where a boot began), ANSI escapes and
    carriage returns removed; empty when there is no log yet."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return ""
    return ANSI.sub("", data.decode(errors="replace")).replace("\r", "")


def failure_lines(text: str, limit: int = 25) -> list[str]:
    """The console lines that matter for a failed boot: Ignition's, systemd's failures, the
    emergency shell, a panic; the last ``limit`` of them."""
    lines = [ln.strip() for ln in text.splitlines()
             if RELEVANT.search(ln) and not NOISE.search(ln)]
    return lines[-limit:]
