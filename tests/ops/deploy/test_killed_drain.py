"""SIGKILL in the middle of a deploy that drains: no private key is left in the temporary
folder. The deploy runs in a child process (tests/ops/deploy/drain_child.py) against the
Kubernetes API double over HTTPS with the cluster's client certificate; the child's TMPDIR is
a folder of the test's own, and /tmp is compared before and after. As a control, the same
with the Kubernetes client loading admin.conf, which does leave the key there: the check can
fail."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from k8simg.model.credential import CloudCredential, ServiceNetwork
from k8simg.pki import cluster_pki
from tests.conftest import write_cluster

ROOT = Path(__file__).resolve().parents[3]


def holds_a_key(path: Path) -> bool:
    """Whether a file holds a private key. /tmp is shared with the machine's other processes
    (the test cloud's MariaDB makes and drops its temporary tables there while this runs): a
    file that is gone by the time it is read held nothing of ours, since what the child left
    stays after its kill."""
    try:
        return path.is_file() and b"PRIVATE KEY" in path.read_bytes()
    except FileNotFoundError:
        return False


def key_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if holds_a_key(p)]


def killed_mid_drain(tmp_path, how: str) -> tuple[list[Path], list[Path]]:
    """(key files in the child's TMPDIR, new key files in /tmp) after the kill."""
    cd = write_cluster(tmp_path / "kd", cloud="k8simg-test", topology="one-master",
                       masters__count=1,
                       workers={"count": 3, "flavor": "x", "volume_size_gb": 10},
                       bastion={"enabled": False})
    cd.state.set_addresses(api="127.0.0.1")  # in the API server's certificate
    CloudCredential.stand_in("https://keystone.invalid/v3", None).save(cd.path)  # as deployed
    cd.state.set_service_network(ServiceNetwork.stand_in())  # as deploy records it
    cluster_pki(cd).ensure()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    before = set(Path("/tmp").iterdir())
    child = subprocess.Popen([sys.executable, "-m", "tests.ops.deploy.drain_child",
                              str(cd.path), how], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env={**os.environ, "TMPDIR": str(scratch)})
    try:
        line = child.stdout.readline()
        assert line == b"DRAINING\n", child.stderr.read().decode()[-2000:]
        child.send_signal(signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    new = set(Path("/tmp").iterdir()) - before
    return key_files(scratch), [p for p in new if holds_a_key(p)]


@pytest.mark.slow  # two child processes with the Kubernetes client, about 10 s
def test_a_deploy_killed_while_draining_leaves_no_key_in_tmp(tmp_path):
    in_tmpdir, in_tmp = killed_mid_drain(tmp_path / "pki", "pki")
    assert in_tmpdir == [] and in_tmp == []
    # the control: the old way writes the cluster-admin key there, and a kill leaves it
    in_tmpdir, _ = killed_mid_drain(tmp_path / "kubeconfig", "kubeconfig")
    assert len(in_tmpdir) == 1, in_tmpdir
