"""`k8simg restore` on the real OpenStack test cloud: the cloud's side of it, asserted by
listing the cloud. The snapshot comes from Swift; each new master's config names it as a
remote file behind a temporary URL of the cluster's own container (never inside user_data),
which serves exactly the bytes the config's SHA-512 names while staged and nothing once the
restore is past it; the old masters gone before the new ones boot side by side (hard
anti-affinity: no more hosts than the masters), new masters with their ports and volumes, the
API load balancer's members moved to them, the old masters' servers, ports and volumes gone,
workers and bastion untouched, and destroy leaving nothing, the restore container included. A
run killed right after the snapshot was staged is run again and goes on with the same new
masters.

The test cloud's servers run nothing (Nova's FakeDriver), so etcd cannot be asked there: the
restore needs ``--skip-unobservable --force`` (refused without either, nothing changed) and the
snapshot's
database is any bytes (restoring real etcd snapshots is test_snapshot.py's and the local
cloud's).
"""

import base64
import datetime as dt
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from k8simg.ignition.render import RESTORE_SOURCE
from k8simg.ops.deploy import Deployment
from k8simg.ops.snapshot import seal, snapshot_name
from k8simg.pki import cluster_pki
from tests.ops.deploy.test_openstack import (  # noqa: F401 (fixtures)
    cluster,
    destroyed_when_failed,
    image,
    listing,
    nothing_left,
)

pytestmark = pytest.mark.slow


def restore(cd, *args, kill_after: str | None = None):
    """`k8simg restore -o json`; with ``kill_after``, SIGKILL right after that event."""
    p = subprocess.Popen([sys.executable, "-m", "k8simg", "restore", str(cd.path), "-o", "json",
                          *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=os.environ.copy())
    events = []
    for line in p.stdout:
        events.append(json.loads(line))
        if kill_after and events[-1]["event"] == kill_after:
            p.send_signal(signal.SIGKILL)
            break
    p.wait()
    return p.returncode, events, p.stderr.read()


def fetch(url: str) -> bytes | int:
    """The URL's bytes, or the HTTP status that refused them."""
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.read()
    except urllib.error.HTTPError as e:
        return e.code


def remote_file(admin, name: str) -> dict:
    """The restore's remote file in the config the server ``name`` booted with."""
    admin.compute.default_microversion = "2.67"
    server = next(admin.compute.servers(name=f"^{name}$", all_projects=True))
    config = json.loads(base64.b64decode(admin.compute.get_server(server.id).user_data))
    return next(f for f in config["storage"]["files"] if f["path"] == RESTORE_SOURCE)


def sealed_snapshot(cd, folder):
    """A snapshot of any 3 MiB, sealed with the cluster's key: (plaintext, sealed file)."""
    cfg, name = cd.load(), cd.load().name
    plain = folder / "etcd.db"
    plain.write_bytes(os.urandom(3 << 20))
    when = dt.datetime.now(dt.UTC).replace(microsecond=0)
    sealed = folder / snapshot_name(name, when, 4242)
    seal(plain, sealed, cluster_pki(cd, cfg).snapshot_key(), cluster=name,
         cluster_uid=cd.state.uid, taken_at=when.isoformat(), revision=4242, total_keys=300,
         etcd_hash=7, member=f"{name}-master-0", kubernetes_version=cfg.kubernetes_version)
    return plain, sealed


def test_restore_boots_new_masters_from_a_swift_snapshot(test_cloud, os_cloud, image,  # noqa: F811
                                                         tmp_path):
    conn, admin = test_cloud.member(), test_cloud.admin()
    cd = cluster(tmp_path, "dr")
    Deployment.for_cluster(cd).deploy()
    uid = cd.state.uid
    lb = conn.load_balancer
    pool = next(lb.pools(name="dr-api-masters"))
    before = listing(conn, cd)
    servers = {s.name: s.id for s in conn.compute.servers() if s.name.startswith("dr-")}

    # The snapshot, sealed with the cluster's key, kept in Swift
    plain, sealed = sealed_snapshot(cd, tmp_path)
    container = Deployment.for_cluster(cd).cloud.object_container("dr-backups")
    container.ensure()
    container.put(sealed.name, sealed)
    ref = f"swift:dr-backups/{sealed.name}"
    try:
        # etcd cannot be asked here: refused, nothing changed; told to skip that, it still
        # wants --force (nobody can tell the quorum is lost)
        code, _, err = restore(cd, "--snapshot", ref)
        assert code == 4, err
        assert "etcd's members cannot be asked from here" in err and "Traceback" not in err
        code, _, err = restore(cd, "--snapshot", ref, "--skip-unobservable")
        assert code == 4, err
        assert "with --skip-unobservable it goes on only with --force too" in err
        assert listing(conn, cd) == before

        # Killed once the snapshot is staged: its temporary URL serves the trip's bytes,
        # whose SHA-512 the new masters' configs name
        new = ["dr-master-3", "dr-master-4", "dr-master-5"]
        code, events, err = restore(cd, "--snapshot", ref, "--skip-unobservable", "--force",
                                    kill_after="snapshot-staged")
        assert code == -signal.SIGKILL, err[-2000:]
        staged = events[-1]
        assert staged["nodes"] == new
        first_url = staged["url"]
        assert first_url.startswith(test_cloud.url("swift") + "/v1/AUTH_")
        assert re.search(f"/k8simg-restore-{uid}/[0-9a-f]{{16}}/etcd.db.enc[?]temp_url_sig=",
                         first_url), first_url
        got = fetch(first_url)
        assert isinstance(got, bytes) and hashlib.sha512(got).hexdigest() == staged["sha512"]
        assert plain.read_bytes()[:4096] not in got  # encrypted for the trip
        assert fetch(first_url.replace("temp_url_sig=", "temp_url_sig=0")) == 401
        # Killed there again: a new upload beside the first, under the container's same key,
        # so the first URL still serves what it served (a master the killed run booted fetches
        # its own upload)
        code, events, err = restore(cd, "--snapshot", ref, "--skip-unobservable", "--force",
                                    kill_after="snapshot-staged")
        assert code == -signal.SIGKILL, err[-2000:]
        second = events[-1]
        assert second["url"] != first_url
        for url, sha in ((second["url"], second["sha512"]), (first_url, staged["sha512"])):
            got = fetch(url)
            assert isinstance(got, bytes) and hashlib.sha512(got).hexdigest() == sha, url

        # Run again: the same new masters, the snapshot staged anew; each new master's config
        # names it. The old masters went before the new ones booted, side by side.
        code, events, err = restore(cd, "--snapshot", ref, "--skip-unobservable", "--force")
        assert code == 0, err[-3000:]
        done = events[-1]
        assert done["event"] == "done" and done["masters"] == new
        assert [e["gate"] for e in events if e["event"] == "gate-skipped"][:1] == ["etcd"]
        restaged = next(e for e in events if e["event"] == "snapshot-staged")
        assert restaged["nodes"] == new and restaged["url"] != first_url
        assert [(e["event"], e.get("node") or e.get("nodes")) for e in events
                if e["event"] in ("deleted", "restored-members-booted")] == [
            ("deleted", f"dr-master-{i}") for i in range(3)] + [
            ("restored-members-booted", new)]
        for name in new:
            f = remote_file(admin, name)
            assert f["contents"]["source"] == restaged["url"]
            assert f["contents"]["verification"]["hash"] == f"sha512-{restaged['sha512']}"
            assert f["mode"] == 0o600
        # Once the new members are up, nothing is staged: both URLs refused, the container gone
        assert [fetch(u) in (401, 404) for u in (first_url, second["url"], restaged["url"])
                ] == [True] * 3
        assert f"k8simg-restore-{uid}" not in {c.name for c in
                                                conn.object_store.containers()}

        # The cloud: new masters with their ports and volumes, the old ones gone, the load
        # balancer's members the new masters, workers and bastion the same servers
        new = set(new)
        got = listing(conn, cd)
        others = {"dr-worker-0", "dr-worker-1", "dr-bastion"}
        assert got["server"] == new | others
        assert got["volume"] == {f"{n}-storage" for n in new | {"dr-worker-0", "dr-worker-1"}}
        assert got["port"] == {f"{n}-port" for n in new | others} | {"dr-api-vip"}
        assert sorted(m.name for m in lb.members(pool)) == sorted(new)
        assert {s.name: s.id for s in conn.compute.servers() if s.name in others} == {
            n: servers[n] for n in others}
        assert {k: v for k, v in got.items() if k not in ("server", "volume", "port")} == {
            k: v for k, v in before.items() if k not in ("server", "volume", "port")}
        assert cd.state.upgrade is None
        # Done is done: the same snapshot again finds a healthy-or-unknown quorum's cluster
        # with nothing recorded, and plans the next masters; nothing is changed by a plan
        r = subprocess.run([sys.executable, "-m", "k8simg", "restore", str(cd.path),
                            "--snapshot", ref, "--skip-unobservable", "--force", "--plan"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert listing(conn, cd) == got
    finally:
        for n in container.names():
            container.delete(n)
        conn.object_store.delete_container("dr-backups")
    assert Deployment.for_cluster(cd).destroy().left == []
    nothing_left(conn, cd)


def test_a_single_master_is_restored_with_its_downtime_said(test_cloud, os_cloud,
                                                           image, tmp_path):  # noqa: F811
    """One master and a worker, the snapshot a file on this machine: the plan says the API is
    down until the new master is up; the master is replaced, the worker is the same server."""
    conn = test_cloud.member()
    cd = cluster(tmp_path, "one", topology="one-master", masters=1, workers=1)
    Deployment.for_cluster(cd).deploy()
    worker = next(conn.compute.servers(name="^one-worker-0$")).id
    _, sealed = sealed_snapshot(cd, tmp_path)
    before = listing(conn, cd)
    r = subprocess.run([sys.executable, "-m", "k8simg", "restore", str(cd.path), "--snapshot",
                        sealed, "--plan", "--skip-unobservable", "--force"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "replace one-master-0 by one-master-1" in r.stdout
    assert "single master: the Kubernetes API is down until the new one is up" in r.stdout
    assert listing(conn, cd) == before
    code, events, err = restore(cd, "--snapshot", str(sealed), "--skip-unobservable",
                                "--force")
    assert code == 0, err[-3000:]
    assert events[-1]["masters"] == ["one-master-1"]
    assert [e["node"] for e in events if e["event"] == "deleted"] == ["one-master-0"]
    got = listing(conn, cd)
    assert got["server"] == {"one-master-1", "one-worker-0", "one-bastion"}
    assert got["volume"] == {"one-master-1-storage", "one-worker-0-storage"}
    pool = next(conn.load_balancer.pools(name="one-api-masters"))
    assert [m.name for m in conn.load_balancer.members(pool)] == ["one-master-1"]
    assert next(conn.compute.servers(name="^one-worker-0$")).id == worker
    assert Deployment.for_cluster(cd).destroy().left == []
    nothing_left(conn, cd)
