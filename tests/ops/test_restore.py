"""`k8simg restore` refuses, before anything changes, what it must not restore: another
cluster's snapshot, one taken under a newer Kubernetes release, a file that is not a snapshot,
a cluster whose etcd cannot be asked. (A restore itself, of three killed masters on the local
cloud, is tests/clouds/local/test_local_cloud.py's.)"""

import os

import pytest
from click.testing import CliRunner

from k8simg.cli import cli
from k8simg.ops.deploy import Deployment
from k8simg.ops.restore import Restore, RestoreAborted
from k8simg.ops.snapshot import seal
from k8simg.pki import cluster_pki
from tests.conftest import write_cluster
from tests.support import snapshot as files_of


@pytest.fixture
def cluster(tmp_path):
    cd = write_cluster(tmp_path / "c")
    cluster_pki(cd).ensure()
    return cd


def sealed(cd, tmp_path, *, key=None, uid=None, kubernetes_version="1.35.2"):
    plain = tmp_path / "etcd.db"
    plain.write_bytes(b"db")
    path = tmp_path / "snaps" / "c-etcd-20261130T080000Z-r5.snapshot"
    path.parent.mkdir(exist_ok=True)
    seal(plain, path, key or cluster_pki(cd).snapshot_key(), cluster="c",
         cluster_uid=uid or cd.state.uid, taken_at="2026-11-30T08:00:00+00:00", revision=5,
         total_keys=1, etcd_hash=1, member="c-master-0", kubernetes_version=kubernetes_version)
    return path


def restore(cd, path):
    return Restore(Deployment.for_cluster(cd, None, dry_run=True), path)


def test_another_clusters_snapshot_is_refused(cluster, tmp_path):
    other = sealed(cluster, tmp_path, key=os.urandom(32), uid="f" * 16)
    with pytest.raises(RestoreAborted, match=r"taken from cluster c \(UID f{16}\); this "
                                             r"cluster \(c, UID [0-9a-f]{16}\) cannot decrypt "
                                             r"it; nothing was changed"):
        restore(cluster, other).check_snapshot()
    # the same UID claimed, another key: refused the same
    forged = sealed(cluster, tmp_path, key=os.urandom(32))
    with pytest.raises(RestoreAborted, match="cannot decrypt it"):
        restore(cluster, forged).check_snapshot()


def test_a_snapshot_of_a_newer_kubernetes_is_refused(cluster, tmp_path):
    newer = sealed(cluster, tmp_path, kubernetes_version="1.36.1")
    with pytest.raises(RestoreAborted, match=r"taken under Kubernetes 1.36.1, newer than the "
                                             r"cluster's 1.35.2"):
        restore(cluster, newer).check_snapshot()
    same = sealed(cluster, tmp_path, kubernetes_version="1.35.0")
    assert restore(cluster, same).check_snapshot().revision == 5


def test_refused_from_the_command_line_with_nothing_changed(cluster, tmp_path):
    mine = sealed(cluster, tmp_path)
    (tmp_path / "not.snapshot").write_bytes(b"SQLite format 3\x00")
    before = files_of(cluster.path)
    # the local cluster is not deployed: its etcd cannot be asked, so nothing is known to be lost
    r = CliRunner().invoke(cli, ["restore", str(cluster.path), "--snapshot", str(mine)])
    assert r.exit_code == 4, r.output
    assert "etcd's members cannot be asked from here" in r.output
    assert "no local network" in r.output
    r = CliRunner().invoke(cli, ["restore", str(cluster.path), "--snapshot",
                                 str(tmp_path / "not.snapshot")])
    assert r.exit_code == 4 and "not a k8simg etcd snapshot" in r.output, r.output
    r = CliRunner().invoke(cli, ["restore", str(cluster.path), "--snapshot",
                                 str(tmp_path / "missing")])
    assert r.exit_code == 2 and "--snapshot" in r.output
    assert files_of(cluster.path) == before


def test_an_altered_snapshot_of_this_cluster_is_refused_before_anything_changes(cluster,
                                                                                 tmp_path):
    path = sealed(cluster, tmp_path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # the last chunk's tag: its header still reads as this cluster's
    path.write_bytes(bytes(data))
    before = files_of(cluster.path)
    with pytest.raises(RestoreAborted, match=r"chunk 0 does not authenticate .*nothing was "
                                             r"changed"):
        restore(cluster, path).plan()
    assert files_of(cluster.path) == before


def test_an_unfinished_restore_or_upgrade_is_finished_first(cluster, tmp_path):
    from k8simg.ops.upgrade import Upgrade, UpgradeAborted

    mine = sealed(cluster, tmp_path)
    cluster.state.begin_upgrade("restore from c-etcd-20261129T080000Z-r4.snapshot")
    with pytest.raises(RestoreAborted, match=r"a restore from c-etcd-20261129T080000Z-r4"
                                             r".snapshot is unfinished: run the restore again "
                                             r"with that snapshot"):
        restore(cluster, mine).plan()
    d = Deployment.for_cluster(cluster, None, dry_run=True)
    with pytest.raises(UpgradeAborted, match=r"run `k8simg restore .* --snapshot ...` with the "
                                             r"same snapshot"):
        Upgrade(d).run()
    r = CliRunner().invoke(cli, ["deploy", str(cluster.path)])
    assert r.exit_code == 1 and "k8simg restore" in r.output, r.output
    cluster.state.end_upgrade()
    cluster.state.begin_upgrade("img-2")
    with pytest.raises(RestoreAborted, match="an upgrade to img-2 is unfinished"):
        restore(cluster, mine).plan()


def test_a_snapshot_is_not_taken_without_the_key_to_read_it_again(cluster):
    (cluster.pki_dir / "etcd-snapshot.key").unlink()
    before = files_of(cluster.path)
    r = CliRunner().invoke(cli, ["etcd", "snapshot", str(cluster.path)])
    assert r.exit_code == 1 and "etcd-snapshot.key: missing: `k8simg pki init` makes it" \
        in r.output, r.output
    assert files_of(cluster.path) == before
