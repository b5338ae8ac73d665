"""The restoring masters' first boots, from their rendered configs, against real etcd on
loopback (each line this machine has): the snapshot travels as a remote file in each config
(fetched over HTTP from loopback, its SHA-512 the config's), the image's restore unit decrypts
it with the key the config carries and restores it with the member's identity in the new
masters' cluster, and the three etcds then start together from the image's unit as on any
boot: one cluster of three voters, every key, value and revision the snapshot's.

Ignition itself cannot run here outside a node's initramfs; what it would do with the remote
file (fetch it, refuse it unless its SHA-512 is the config's) is done by the test, and the
config passes the real ``ignition-validate``.
"""

import hashlib
import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from k8simg.ignition.digest import file_digests
from k8simg.ignition.document import dumps
from k8simg.ignition.image import ETCD_RESTORE, ETCD_RESTORE_ENV, RESTORE_SOURCE
from k8simg.ignition.render import EtcdRestore, render_context, render_node
from k8simg.model.plan import client_url, peer_url
from k8simg.ops.snapshot import for_the_trip, take
from k8simg.pki import cluster_pki
from tests.ignition.support import (
    enabled_units,
    env_values,
    exec_start,
    materialise,
    node_view,
    remote_files,
    unit_text,
)
from tests.ops.test_snapshot import everything, snapshot_tool
from tests.ops.upgrade import test_etcd_roll as roll
from tests.support import etcd_available, file_server, processes, wait_until

pytestmark = pytest.mark.skipif(not etcd_available(), reason="etcd-server/etcd-client missing")

three_members = roll.three_members


@pytest.fixture
def served(tmp_path):
    """A folder served over HTTP on loopback: ``(folder, base URL)``."""
    folder = tmp_path / "served"
    folder.mkdir()
    with file_server(folder) as (url, _port):
        yield folder, url


def fetch_as_ignition(url: str, want: str, dest: Path, mode: int) -> None:
    """What Ignition does with a remote file: fetch it, refuse it unless its hash is the
    config's."""
    data = urllib.request.urlopen(url, timeout=30).read()  # noqa: S310 (loopback)
    algorithm, _, digest = want.partition("-")
    assert hashlib.new(algorithm, data).hexdigest() == digest, f"{url}: hash mismatch"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    dest.chmod(mode)


@pytest.mark.parametrize("three_members", sorted(roll.LINES) or ["3.4"], indirect=True)
def test_the_restoring_masters_first_boots_make_one_etcd_from_the_snapshot(
        three_members, served, tmp_path):
    cd, members, etcd = three_members
    line, cfg, nodes = members.etcd_line, members.cfg, members.nodes
    old = [nodes[f"roll-master-{i}"] for i in range(3)]
    eps = [client_url(n) for n in old]
    for args in (["put", "/r/a", "1"], ["put", "/r/a", "2"], ["put", "/r/b", "x"],
                 ["del", "/r/b"], ["put", "/r/c", "3"]):
        assert etcd.ctl(args, eps).returncode == 0
    revision, before = everything(etcd, eps)
    key, uid = cluster_pki(cd).snapshot_key(), cd.state.ensure_uid()
    sealed = take(etcd, eps[0], old[0].name, cd.backups_dir, cluster=cfg.name, cluster_uid=uid,
                  key=key, tool=snapshot_tool(Path(members.etcd_binary)))
    assert etcd.ctl(["put", "/r/after", "lost"], eps).returncode == 0
    for n in old:  # the disaster
        members.stop(n)

    folder, base = served
    trip = for_the_trip(sealed.path, key, uid, folder / "etcd.db.enc")
    assert b"/r/a" not in trip.path.read_bytes()  # encrypted for the trip, too
    news = [nodes[f"roll-master-{i}"] for i in (3, 4, 5)]
    ctx = render_context(cd, nodes=news)
    docs = {}
    for n in news:  # as `k8simg restore` renders them: each with the restore, in turn
        ctx.restore = EtcdRestore(n.name, f"{base}/etcd.db.enc", trip.sha512, trip.key, trip.iv)
        docs[n.name] = render_node(ctx, n)
    doc = docs[news[0].name]
    (tmp_path / "config.ign").write_bytes(dumps(doc))
    r = subprocess.run(["ignition-validate", str(tmp_path / "config.ign")], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    # The snapshot is not in the config, only where to get it and its hash; the key is, 0600
    assert remote_files(doc) == {RESTORE_SOURCE: (0o600, f"{base}/etcd.db.enc",
                                                  f"sha512-{trip.sha512}")}
    assert len(dumps(doc)) < 49149
    assert "k8simg-etcd-restore.service" in enabled_units(doc)
    # Nor is any of it what the member's config is compared by later (it is not stale for it)
    plain = render_node(render_context(cd, nodes=news), news[0])
    assert file_digests(dumps(doc)) == file_digests(dumps(plain))
    # Each is a member of the new masters' cluster, with its own name and peer URL
    initial = ",".join(f"{n.name}={peer_url(n)}" for n in news)
    assert [(env_values(docs[n.name], "/etc/k8simg/etcd.env")["ETCD_NAME"],
             env_values(docs[n.name], "/etc/k8simg/etcd.env")["ETCD_INITIAL_CLUSTER"],
             env_values(docs[n.name], "/etc/k8simg/etcd.env")["ETCD_INITIAL_CLUSTER_STATE"])
            for n in news] == [(n.name, initial, "new") for n in news]

    # The image's restore unit, for the etcd line the image carries, as systemd would run it
    unit = unit_text(doc, "k8simg-etcd-restore.service", cfg.kubernetes_version, line)
    assert "Before=k8simg-etcd.service" in unit and "RequiredBy=k8simg-etcd.service" in unit
    assert f"ConditionPathExists={RESTORE_SOURCE}" in unit
    assert exec_start(unit) == [ETCD_RESTORE]
    script = node_view(doc, cfg.kubernetes_version, line)[ETCD_RESTORE][1]
    roots, envs = {}, {}
    for n in news:
        root = roots[n.name] = tmp_path / n.name
        materialise(docs[n.name], root)
        for path, (mode, url, want) in remote_files(docs[n.name]).items():
            fetch_as_ignition(url, want, root / path.lstrip("/"), mode)
        assert (root / ETCD_RESTORE_ENV.lstrip("/")).stat().st_mode & 0o777 == 0o600
        (root / "restore.sh").write_bytes(script)
        envs[n.name] = {
            **env_values(docs[n.name], "/etc/k8simg/etcd.env"),
            **env_values(docs[n.name], ETCD_RESTORE_ENV),
            "K8SIMG_RESTORE_SOURCE": str(root / RESTORE_SOURCE.lstrip("/")),
            "K8SIMG_ETCD_DATA_DIR": str(root / "var/lib/etcd"),
            "K8SIMG_RESTORE_ENV": str(root / ETCD_RESTORE_ENV.lstrip("/")),
            # the line's own etcdutl (3.5 on) or etcdctl, as the image has them in /usr/bin
            "PATH": f"{Path(members.etcd_binary).parent}:/usr/bin:/bin"}
        (root / "var/lib/etcd").mkdir(parents=True)  # the volume's bind mount

    # A run that fails half-way (here: the wrong key) leaves no plaintext and no member data
    root, env = roots[news[0].name], envs[news[0].name]
    wrong = {**env, "RESTORE_KEY": "00" * 32}
    r = subprocess.run(["sh", str(root / "restore.sh")], capture_output=True, text=True,
                       env=wrong, timeout=120)
    assert r.returncode != 0
    restore_dir = (root / RESTORE_SOURCE.lstrip("/")).parent
    assert sorted(p.name for p in restore_dir.iterdir()) == ["etcd.db.enc"]
    assert list((root / "var/lib/etcd").iterdir()) == []
    for n in news:
        r = subprocess.run(["sh", str(roots[n.name] / "restore.sh")], capture_output=True,
                           text=True, env=envs[n.name], timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert (roots[n.name] / "var/lib/etcd/member").is_dir()
        # the snapshot, its plaintext and the key are gone
        assert list((roots[n.name] / RESTORE_SOURCE.lstrip("/")).parent.iterdir()) == []
        assert not (roots[n.name] / ETCD_RESTORE_ENV.lstrip("/")).exists()
    # run again (a reboot before etcd's first start went through): it leaves the data be
    r2 = subprocess.run(["sh", str(root / "restore.sh")], capture_output=True, text=True,
                        env=env, timeout=60)
    assert r2.returncode == 0 and "nothing to restore" in r2.stdout

    # The three started together, as their first boots start them, from the image's unit
    started = time.monotonic()
    with processes(kill=True) as start:
        for n in news:
            args = exec_start(unit_text(docs[n.name], "k8simg-etcd.service",
                                        cfg.kubernetes_version, line))
            rebased = [members.etcd_binary] + [
                a.replace("/etc/kubernetes/pki", f"{roots[n.name]}/etc/kubernetes/pki")
                 .replace("/var/lib/etcd", f"{roots[n.name]}/var/lib/etcd")
                 .replace("//127.0.0.1:2381", f"//{n.address}:2381") for a in args[1:]]
            start(rebased, stdout=open(tmp_path / f"restored-{n.name}.log", "w"),
                  stderr=subprocess.STDOUT, env=env_values(docs[n.name], "/etc/k8simg/etcd.env"))
        new_eps = [client_url(n) for n in news]
        wait_until(lambda: all(e.healthy for e in etcd.health(new_eps)), 120,
                   "the restored members healthy")
        print(f"etcd {line}: three restored members healthy {time.monotonic() - started:.1f} s "
              "after their start")
        got = etcd.members(new_eps)
        assert sorted((m.name, m.learner) for m in got) == [(n.name, False) for n in news]
        # one cluster, not three of one: every member names the same cluster and leader
        status = etcd.ctl(["endpoint", "status", "-w", "json"], new_eps)
        headers = [x["Status"]["header"] for x in json.loads(status.stdout)]
        assert len(headers) == 3 and len({h["cluster_id"] for h in headers}) == 1
        assert len({x["Status"]["leader"] for x in json.loads(status.stdout)}) == 1
        for ep in new_eps:  # every key, value and revision, asked through each
            after_revision, after = everything(etcd, [ep])
            assert after == before and after_revision == revision, ep
        assert json.loads(etcd.ctl(["get", "/r/after", "-w", "json"], new_eps).stdout
                          ).get("kvs") is None  # written after the snapshot
