"""A restoring member's first boot, from its rendered config, against real etcd on loopback
(each line this machine has): the snapshot travels as a remote file in the config (fetched
over HTTP from loopback, its SHA-512 the config's), the image's restore unit decrypts it with
the key the config carries and restores it with the member's identity, and etcd then starts
from the image's unit as on any boot. Every key, value and revision is the snapshot's.

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
from k8simg.model.plan import client_url
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
def test_a_restoring_members_first_boot_makes_its_etcd_from_the_snapshot(
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
    new = nodes["roll-master-3"]
    ctx = render_context(cd, nodes=[new])
    ctx.restore = EtcdRestore(new.name, f"{base}/etcd.db.enc", trip.sha512, trip.key, trip.iv)
    doc = render_node(ctx, new)
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
    plain = render_node(render_context(cd, nodes=[new]), new)
    assert file_digests(dumps(doc)) == file_digests(dumps(plain))

    root = tmp_path / new.name
    materialise(doc, root)
    for path, (mode, url, want) in remote_files(doc).items():
        fetch_as_ignition(url, want, root / path.lstrip("/"), mode)
    assert (root / ETCD_RESTORE_ENV.lstrip("/")).stat().st_mode & 0o777 == 0o600

    # The image's restore unit, for the etcd line the image carries, as systemd would run it
    unit = unit_text(doc, "k8simg-etcd-restore.service", cfg.kubernetes_version, line)
    assert "Before=k8simg-etcd.service" in unit and "RequiredBy=k8simg-etcd.service" in unit
    assert f"ConditionPathExists={RESTORE_SOURCE}" in unit
    assert exec_start(unit) == [ETCD_RESTORE]
    script = node_view(doc, cfg.kubernetes_version, line)[ETCD_RESTORE][1]
    (root / "restore.sh").write_bytes(script)
    env = {**env_values(doc, "/etc/k8simg/etcd.env"), **env_values(doc, ETCD_RESTORE_ENV),
           "K8SIMG_RESTORE_SOURCE": str(root / RESTORE_SOURCE.lstrip("/")),
           "K8SIMG_ETCD_DATA_DIR": str(root / "var/lib/etcd"),
           "K8SIMG_RESTORE_ENV": str(root / ETCD_RESTORE_ENV.lstrip("/")),
           # the line's own etcdutl (3.5 on) or etcdctl, as the image has them in /usr/bin
           "PATH": f"{Path(members.etcd_binary).parent}:/usr/bin:/bin"}
    (root / "var/lib/etcd").mkdir(parents=True)  # the volume's bind mount
    # A run that fails half-way (here: the wrong key) leaves no plaintext and no member data
    wrong = {**env, "RESTORE_KEY": "00" * 32}
    r = subprocess.run(["sh", str(root / "restore.sh")], capture_output=True, text=True,
                       env=wrong, timeout=120)
    assert r.returncode != 0
    restore_dir = (root / RESTORE_SOURCE.lstrip("/")).parent
    assert sorted(p.name for p in restore_dir.iterdir()) == ["etcd.db.enc"]
    assert list((root / "var/lib/etcd").iterdir()) == []
    r = subprocess.run(["sh", str(root / "restore.sh")], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (root / "var/lib/etcd/member").is_dir()
    # the snapshot, its plaintext and the key are gone
    assert list(restore_dir.iterdir()) == []
    assert not (root / ETCD_RESTORE_ENV.lstrip("/")).exists()
    # run again (a reboot before etcd's first start went through): it leaves the data be
    r2 = subprocess.run(["sh", str(root / "restore.sh")], capture_output=True, text=True,
                        env=env, timeout=60)
    assert r2.returncode == 0 and "nothing to restore" in r2.stdout

    args = exec_start(unit_text(doc, "k8simg-etcd.service", cfg.kubernetes_version, line))
    rebased = [members.etcd_binary] + [
        a.replace("/etc/kubernetes/pki", f"{root}/etc/kubernetes/pki")
         .replace("/var/lib/etcd", f"{root}/var/lib/etcd")
         .replace("//127.0.0.1:2381", f"//{new.address}:2381") for a in args[1:]]
    started = time.monotonic()
    with processes(kill=True) as start:
        start(rebased, stdout=open(tmp_path / "restored.log", "w"), stderr=subprocess.STDOUT,
              env=env_values(doc, "/etc/k8simg/etcd.env"))
        new_ep = [client_url(new)]
        wait_until(lambda: any(e.healthy for e in etcd.health(new_ep)), 60,
                   "the restored member healthy")
        print(f"etcd {line}: restored member healthy {time.monotonic() - started:.1f} s after "
              "its start")
        got = etcd.members(new_ep)
        assert [(m.name, m.learner) for m in got] == [(new.name, False)]
        after_revision, after = everything(etcd, new_ep)
        assert after == before and after_revision == revision
        assert json.loads(etcd.ctl(["get", "/r/after", "-w", "json"], new_ep).stdout
                          ).get("kvs") is None  # written after the snapshot
