"""The local cloud's tests: real network namespaces, dnsmasq, haproxy and QEMU.

The daemons the local cloud starts outlive the command that started them, as they must; their
parent becomes the nearest "child subreaper". This machine's PID 1 reaps nothing, so the tests
make themselves that subreaper and reap what they stopped: otherwise every stopped daemon
would linger as a zombie entry, which is not a process but would look like one.
"""

import ctypes
import os
import shutil
from pathlib import Path

import pytest

from k8simg.clouds.local.network import Namespace, namespace_name
from k8simg.clouds.local.process import ProcessTable, running
from k8simg.ops.deploy import Deployment

PR_SET_CHILD_SUBREAPER = 36


@pytest.fixture(scope="session", autouse=True)
def subreaper():
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("the local cloud needs root and iproute2")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.fail(f"prctl(PR_SET_CHILD_SUBREAPER): errno {ctypes.get_errno()}")


def reap(pids) -> None:
    """Collect the exit status of stopped daemons (our orphans, see above)."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def leftovers(cd, pids) -> list[str]:
    """Whatever of the local cloud is still there: processes, the namespace, its mount, loop
    devices or files; empty when destroy left nothing."""
    found = [f"process {pid}" for pid in pids if running(pid)]
    ns = Namespace(namespace_name(cd.load().name, cd.path))
    if ns.exists:
        found.append(f"namespace {ns.name}")
    mounts = Path("/proc/self/mountinfo").read_text()
    if ns.name in mounts:
        found.append(f"mount of {ns.name}")
    loops = os.popen("losetup -a 2>/dev/null").read()
    if str(cd.path) in loops:
        found.append(f"loop device on {cd.path}")
    if (cd.path / "local").exists():
        found.append(f"{cd.path / 'local'}")
    return found


def keep_consoles(cd) -> None:
    """The nodes' serial consoles copied to ``<cluster dir>-consoles/<node>.log`` before
    destroy removes them with the nodes: a failed test's stay in pytest's temporary folder."""
    logs = sorted((cd.path / "local" / "nodes").glob("*/console.log"))
    if logs:
        kept = cd.path.parent / f"{cd.path.name}-consoles"
        kept.mkdir(exist_ok=True)
        for log in logs:
            shutil.copyfile(log, kept / f"{log.parent.name}.log")


@pytest.fixture
def local_cluster():
    """Clusters made by a test are destroyed after it, whatever happened, and checked to
    leave nothing behind; the daemons they stopped are reaped."""
    made = []
    yield made.append
    for cd in made:
        keep_consoles(cd)
        pids = [r.pid for r in ProcessTable(cd.path / "local" / "processes.json").all().values()]
        try:
            Deployment.for_cluster(cd).destroy()
        finally:
            reap(pids)
