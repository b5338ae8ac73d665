"""Snapshots kept off the cluster in Swift: the OpenStack test cloud's real Swift (proxy with
Keystone auth, account, container and object servers). Snapshots are sealed on this machine
(sealing and restoring real etcd snapshots is test_snapshot.py's), uploaded whole and checked,
listed from their headers (another cluster's and other objects left alone), pruned to the N
newest of the cluster's own, and downloaded for a restore. A Swift that cannot be reached is
named before anything is taken, and nothing is made.

No etcd can be asked on the test cloud (its servers run nothing): taking the snapshot from the
cluster's members through the bastion is the local cloud's test (tests/clouds/local).
"""

import datetime as dt
import json
import os
import subprocess
import sys

import pytest

from k8simg.clouds.base import CloudError
from k8simg.ops.deploy import Deployment
from k8simg.ops.snapshot import (
    CHUNK,
    SnapshotError,
    fetch_stored,
    key_id,
    read_header,
    seal,
    snapshot_name,
    stored_listing,
    stored_prune,
    unseal,
)
from k8simg.pki import cluster_pki
from tests.conftest import write_cluster
from tests.support import free_ports

pytestmark = pytest.mark.slow

T0 = dt.datetime(2026, 11, 30, 9, 0, tzinfo=dt.UTC)


def k8simg(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "k8simg", *map(str, args)], text=True,
                          capture_output=True, timeout=300)


def openstack_cluster(tmp_path, name, cloud="k8simg-test"):
    cd = write_cluster(tmp_path / name, cloud=cloud, image="k8simg-bench", topology="ha",
                       openstack__external_network="public")
    return cd, cluster_pki(cd, cd.load()).snapshot_key()


def sealed(folder, cluster: str, uid: str, key: bytes, hours: int, revision: int):
    """A sealed snapshot of a database of two chunks and a bit (any bytes: etcd's own are
    test_snapshot.py's), taken ``hours`` after T0."""
    when = T0 + dt.timedelta(hours=hours)
    plain = folder / f"plain-{hours}"
    plain.write_bytes(os.urandom(2 * CHUNK + 12345))
    dest = folder / snapshot_name(cluster, when, revision)
    seal(plain, dest, key, cluster=cluster, cluster_uid=uid,
         taken_at=when.isoformat(timespec="seconds"), revision=revision, total_keys=10,
         etcd_hash=1234, member=f"{cluster}-master-0", kubernetes_version="1.35.2")
    return dest, plain


def test_snapshots_in_swift_are_uploaded_listed_pruned_and_fetched(test_cloud, os_cloud,
                                                                   tmp_path):
    cd, key = openstack_cluster(tmp_path, "swifty")
    uid = cd.state.uid
    cloud = Deployment.for_cluster(cd, None).cloud
    name = f"k8simg-test-snapshots-{uid[:8]}"
    container = cloud.object_container(name)
    container.ensure()
    container.ensure()  # there already: left as it is
    made = [c for c in cloud.ledger.changes if c.kind == "swift container"]
    assert [(c.action, c.name) for c in made] == [("create", name)]
    try:
        local = tmp_path / "sealed"
        local.mkdir()
        mine = [sealed(local, "swifty", uid, key, h, 100 + h) for h in range(4)]
        for path, _ in mine:
            container.put(path.name, path)
        # another cluster's (same name, another UID and key), and an object of the operator's
        other_cd, other_key = openstack_cluster(tmp_path, "other")
        other, _ = sealed(local, "swifty", other_cd.state.uid, other_key, 10, 999)
        container.put("swifty-etcd-20261201T000000Z-r999.snapshot", other)
        notes = tmp_path / "notes.txt"
        notes.write_text("the operator's own\n")
        container.put("notes.txt", notes)

        found = stored_listing(container, uid)
        assert [s.path.name for s in found] == [p.name for p, _ in mine]  # oldest first
        assert [s.header for s in found] == [read_header(p) for p, _ in mine]
        assert found[0].ref == f"swift:{name}/{mine[0][0].name}"

        r = k8simg("etcd", "snapshots", cd.path, "--in", f"swift:{name}", "-o", "json")
        assert r.returncode == 0, r.stderr
        listed = json.loads(r.stdout)
        assert [e["ref"] for e in listed] == [s.ref for s in found]
        assert [e["revision"] for e in listed] == [100, 101, 102, 103]
        assert all("path" not in e for e in listed)

        removed = stored_prune(container, uid, 2, key_id(key))
        assert removed == [s.ref for s in found[:2]]
        assert container.names() == sorted(
            ["notes.txt", "swifty-etcd-20261201T000000Z-r999.snapshot",
             *(p.name for p, _ in mine[2:])])

        # Back for a restore: the same bytes, which unseal with the cluster's key
        got = fetch_stored(container, mine[3][0].name, cd.backups_dir, uid)
        assert got.path == cd.backups_dir / mine[3][0].name
        assert got.path.read_bytes() == mine[3][0].read_bytes()
        assert got.path.stat().st_mode & 0o777 == 0o600
        out = tmp_path / "db"
        unseal(got.path, out, key, uid)
        assert out.read_bytes() == mine[3][1].read_bytes()
        with pytest.raises(SnapshotError, match=rf"swift:{name} on cloud 'k8simg-test'/swifty-"
                                                rf"etcd-20261201T000000Z-r999.snapshot: taken "
                                                rf"from cluster swifty \(UID "
                                                rf"{other_cd.state.uid}\), not this one"):
            fetch_stored(container, "swifty-etcd-20261201T000000Z-r999.snapshot",
                         tmp_path / "never", uid)
        assert not (tmp_path / "never").exists()
        with pytest.raises(SnapshotError, match="notes.txt: not a k8simg etcd snapshot"):
            fetch_stored(container, "notes.txt", tmp_path / "never", uid)

        # restore takes it by its ref: downloaded into backups/, then planned (refused here:
        # nothing reaches the test cloud's etcd, so its quorum cannot be judged, and OpenStack
        # serves no restore yet), nothing changed in the cloud
        got.path.unlink()
        r = k8simg("restore", cd.path, "--snapshot", found[3].ref, "--plan")
        assert r.returncode == 4 and "Traceback" not in r.stderr
        assert "etcd's members cannot be asked from here" in r.stderr
        assert f"downloading {found[3].ref}" in r.stderr
        assert (cd.backups_dir / mine[3][0].name).read_bytes() == mine[3][0].read_bytes()
        r = k8simg("restore", cd.path, "--snapshot", f"swift:{name}/no-such.snapshot", "--plan")
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert f"swift:{name} on cloud 'k8simg-test': no object no-such.snapshot there" \
            in r.stderr
    finally:
        for n in container.names():
            container.delete(n)
        cloud.scope.conn.object_store.delete_container(name)


def test_an_unreachable_swift_is_named_and_nothing_is_taken(test_cloud, os_cloud, tmp_path,
                                                            monkeypatch):
    """Swift down (here: its endpoint a closed port): the snapshot is refused before etcd is
    asked, naming the container and the cloud, no traceback, no file left behind."""
    clouds = json.loads((tmp_path / "clouds.yaml").read_text())
    (port,) = free_ports(1)
    clouds["clouds"]["no-swift"] = {**clouds["clouds"]["k8simg-test"],
                                    "object_store_endpoint_override":
                                    f"http://127.0.0.1:{port}/v1/AUTH_none"}
    (tmp_path / "clouds.yaml").write_text(json.dumps(clouds))
    cd, key = openstack_cluster(tmp_path, "down", cloud="no-swift")
    for args in (["etcd", "snapshot", cd.path, "--to", "swift:snaps"],
                 ["etcd", "snapshots", cd.path, "--in", "swift:snaps"]):
        r = k8simg(*args)
        assert r.returncode == 1, r
        assert "Traceback" not in r.stderr
        assert r.stderr.startswith("Error: swift:snaps on cloud 'no-swift': cannot "), r.stderr
        assert "etcd" not in r.stderr.splitlines()[-1].split(": cannot ")[1][:20]
    assert not cd.backups_dir.exists() or list(cd.backups_dir.iterdir()) == []
    # nor can a restore stage a snapshot there for a new master: refused up front
    (tmp_path / "sealed").mkdir()
    path, _ = sealed(tmp_path / "sealed", "down", cd.state.uid, key, 1, 7)
    r = k8simg("restore", cd.path, "--snapshot", path, "--plan")
    assert r.returncode == 4 and "Traceback" not in r.stderr, r
    assert "cloud 'no-swift''s Swift cannot be asked" in r.stderr
    assert "a restore stages the snapshot for the new masters there" in r.stderr
    # The local cloud keeps no object store at all
    local = write_cluster(tmp_path / "here")
    cluster_pki(local, local.load()).snapshot_key()
    r = k8simg("etcd", "snapshot", local.path, "--to", "swift:snaps")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert ("the local cloud has no object store to keep snapshots in (swift:snaps): keep them "
            "in a folder (--to DIR)") in r.stderr
    with pytest.raises(CloudError):
        Deployment.for_cluster(local, None).cloud.object_container("x")
