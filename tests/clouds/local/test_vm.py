"""``Vm.wait_for`` against a real process standing for QEMU (no VM booted); the emulated CPU's
model read back from a paused QEMU."""

import json
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from k8simg.clouds.local import vm as qemu
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


def _qmp(proc: subprocess.Popen, sock_path: Path, commands: list[dict]) -> list[dict]:
    """Send QMP ``commands`` to ``proc``, a QEMU listening on ``sock_path``; their answers."""
    deadline = time.monotonic() + 30
    while True:
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(sock_path))
            break
        except OSError:
            s.close()
            if proc.poll() is not None:
                pytest.fail(f"QEMU exited {proc.returncode}: {proc.stderr.read()}")
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    with s, s.makefile("rw") as f:
        json.loads(f.readline())  # the greeting
        answers = []
        for cmd in [{"execute": "qmp_capabilities"}, *commands]:
            f.write(json.dumps(cmd) + "\n")
            f.flush()
            while "return" not in (got := json.loads(f.readline())) and "error" not in got:
                pass  # an event
            answers.append(got)
        return answers[1:]


@pytest.mark.parametrize("model,rdrand,svm", [(None, True, False), ("qemu64", False, True)])
def test_the_emulated_cpu_model_and_its_rdrand(tmp_path, model, rdrand, svm):
    """The local cloud's QEMU, paused before the guest runs: the model it was given (the
    default, or ``local.cpu_model``'s), RDRAND and SVM in it or not, and a machine without the
    PS/2 controller, SMBus and VMware port, read back over QMP."""
    disk = tmp_path / "root.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    args = qemu.qemu_args("cpu", disk, tmp_path / "console.log", kvm=False, cpu_model=model)
    sock = tmp_path / "qmp.sock"
    p = subprocess.Popen(args + ["-S", "-qmp", f"unix:{sock},server=on,wait=off"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        cpus, = _qmp(p, sock, [{"execute": "query-cpus-fast"}])
        path = cpus["return"][0]["qom-path"]
        typ, has, virt, tree = _qmp(p, sock, [
            *({"execute": "qom-get", "arguments": {"path": path, "property": prop}}
              for prop in ("type", "rdrand", "svm")),
            {"execute": "human-monitor-command", "arguments": {"command-line": "info qtree"}}])
        assert typ.get("return", typ) == "qemu64-x86_64-cpu"
        assert has.get("return", has) is rdrand
        assert virt.get("return", virt) is svm
        # the devices themselves gone (a plain q35 lists all five)
        devices = set(re.findall(r"dev: ([\w-]+)", tree.get("return", "")))
        assert "virtio-blk-pci" in devices, tree  # the tree was read
        assert devices & {"i8042", "ps2-mouse", "vmport", "vmmouse", "ICH9-SMB"} == set()
    finally:
        p.kill()
        p.wait()
