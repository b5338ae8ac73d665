"""``Vm.wait_for`` against a real process standing for QEMU (no VM booted)."""

import subprocess
from pathlib import Path

import pytest

from k8simg.clouds.local.vm import Vm, VmError


class ReadBeforeTheWrite:
    """A console whose first read comes before the process wrote it."""

    def __init__(self, path: Path):
        self.path, self.reads = path, 0

    def read_text(self, errors=None) -> str:
        self.reads += 1
        return "" if self.reads == 1 else self.path.read_text(errors=errors)


class ExitsAfterTheFirstRead:
    """QEMU's process, running until the console's first read and exited after it (its last
    line written and its exit in between)."""

    def __init__(self, process: subprocess.Popen, console: ReadBeforeTheWrite):
        self.process, self.console = process, console

    def poll(self):
        return None if self.console.reads == 0 else self.process.poll()


def exited_after_writing(console: Path, text: str) -> subprocess.Popen:
    p = subprocess.Popen(["sh", "-c", 'printf "%s\\n" "$1" > "$2"', "sh", text, str(console)])
    p.wait(timeout=10)
    return p


def test_a_marker_written_just_before_qemu_exits_is_found(tmp_path):
    console = tmp_path / "console.log"
    proc = exited_after_writing(console, "K8SIMG-REPORT-END")
    read = ReadBeforeTheWrite(console)
    vm = Vm("n", ExitsAfterTheFirstRead(proc, read), read)
    assert vm.wait_for("K8SIMG-REPORT-END", timeout=30, poll=0.01).strip() == "K8SIMG-REPORT-END"
    assert vm.console.reads == 2


def test_qemu_exiting_without_the_marker_is_an_error_with_its_last_lines(tmp_path):
    console = tmp_path / "console.log"
    proc = exited_after_writing(console, "Kernel panic - not syncing")
    with pytest.raises(VmError, match="n: exited; last console lines:\nKernel panic"):
        Vm("n", proc, console).wait_for("K8SIMG-REPORT-END", timeout=30, poll=0.01)


def test_a_marker_written_during_the_last_wait_is_found(tmp_path):
    console = tmp_path / "console.log"
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        vm = Vm("n", sleeper, ReadBeforeTheWrite(console))
        console.write_text("K8SIMG-REPORT-END\n")  # after the first read, before the deadline
        assert vm.wait_for("K8SIMG-REPORT-END", timeout=0.05, poll=0.2).strip() == \
            "K8SIMG-REPORT-END"
    finally:
        sleeper.kill()
        sleeper.wait()
