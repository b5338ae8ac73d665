import base64
import datetime as dt
import json
import os
import stat

import pytest
from click.testing import CliRunner
from cryptography import x509

from k8simg.cli import cli
from k8simg.errors import PkiError
from k8simg.pki import certs as table
from k8simg.pki import cluster_pki
from k8simg.pki.keys import generate_key, key_pem
from tests.conftest import NOW


def snapshot(root):
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_generates_the_whole_set_with_safe_modes(make_cluster, clock):
    cd = make_cluster()
    p = cluster_pki(cd, clock=clock)
    result = p.ensure()
    ids = [i.id for i in table.instances(p.ctx)]
    assert result.created == ids + ["sa", "ssh/bastion_host_ed25519_key", "etcd-snapshot.key"]
    assert len(ids) == 3 + 3 * 3 + 8 + 5  # CAs, per-master x3, shared leaves, kubelets
    # the snapshot key: 32 random bytes, base64, private
    assert len(base64.b64decode((cd.pki_dir / "etcd-snapshot.key").read_bytes())) == 32
    for path in cd.pki_dir.rglob("*"):
        if path.is_file():
            mode = stat.S_IMODE(path.stat().st_mode)
            private = path.suffix == ".key" or path.name.endswith("_key")
            assert mode == (0o600 if private else 0o644), path
    host_key = (cd.pki_dir / "ssh/bastion_host_ed25519_key").read_bytes()
    assert host_key.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert p.bastion_host_public_key().startswith("ssh-ed25519 ")
    kubeconfigs = p.write_kubeconfigs(cd.kubeconfig_dir)
    assert {k.name for k in kubeconfigs} == {"admin.conf", "super-admin.conf",
                                             "controller-manager.conf", "scheduler.conf",
                                             "kubelet.conf"}
    assert all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in kubeconfigs)
    assert p.verify() == []
    assert not list(cd.path.rglob("*.tmp"))


def test_init_never_overwrites(make_cluster, clock):
    cd = make_cluster()
    cluster_pki(cd, clock=clock).ensure()
    before = snapshot(cd.pki_dir)
    result = cluster_pki(cd, clock=clock).ensure()
    # pairs, and the snapshot key alone
    assert result.created == [] and len(before) == 2 * len(result.existing) - 1
    assert snapshot(cd.pki_dir) == before


def test_fills_in_only_what_is_missing(make_cluster, clock):
    cd = make_cluster()
    cluster_pki(cd, clock=clock).ensure()
    (cd.pki_dir / "nodes/c0-worker-1/kubelet-client.crt").unlink()
    (cd.pki_dir / "nodes/c0-worker-1/kubelet-client.key").unlink()
    (cd.pki_dir / "sa.pub").unlink()
    before = snapshot(cd.pki_dir)
    result = cluster_pki(cd, clock=clock).ensure()
    assert result.created == ["kubelet@c0-worker-1"]
    after = snapshot(cd.pki_dir)
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) - set(before) == {"nodes/c0-worker-1/kubelet-client.crt",
                                        "nodes/c0-worker-1/kubelet-client.key", "sa.pub"}


def test_interrupted_run_reuses_the_orphan_key(make_cluster, clock):
    """A crash between writing a key and its certificate must not wedge the PKI."""
    cd = make_cluster()
    cluster_pki(cd, clock=clock).ensure()
    crt = cd.pki_dir / "front-proxy-client.crt"
    key_bytes = (cd.pki_dir / "front-proxy-client.key").read_bytes()
    crt.unlink()
    assert cluster_pki(cd, clock=clock).ensure().created == ["front-proxy-client"]
    assert (cd.pki_dir / "front-proxy-client.key").read_bytes() == key_bytes
    assert cluster_pki(cd, clock=clock).verify() == []


@pytest.mark.parametrize("damage, file, message", [
    ("swap-key", "apiserver-etcd-client.key", "does not match apiserver-etcd-client.crt"),
    ("foreign-leaf", "etcd/healthcheck-client.crt", "does not chain to etcd/ca.crt"),
    ("drop-key", "apiserver-kubelet-client.crt", "certificate without its key"),
    ("garbage", "ca.crt", "not a PEM certificate"),
    ("drop-ca", "front-proxy-client.crt", "its CA front-proxy-ca.crt is missing"),
    ("sa-mismatch", "sa.pub", "does not match sa.key"),
])
def test_inconsistent_pki_is_reported_not_used(make_cluster, clock, damage, file, message):
    cd = make_cluster()
    cluster_pki(cd, clock=clock).ensure()
    other = make_cluster()
    cluster_pki(other, clock=clock).ensure()
    root = cd.pki_dir
    if damage == "swap-key":
        (root / file).write_bytes(key_pem(generate_key("ecdsa-p256")))
    elif damage == "foreign-leaf":
        (root / file).write_bytes((other.pki_dir / file).read_bytes())
    elif damage == "drop-key":
        (root / file).with_suffix(".key").unlink()
    elif damage == "garbage":
        (root / file).write_text("not a cert")
    elif damage == "drop-ca":
        (root / "front-proxy-ca.crt").unlink()
        (root / "front-proxy-ca.key").unlink()
    elif damage == "sa-mismatch":
        (root / "sa.pub").write_bytes((other.pki_dir / "sa.pub").read_bytes())
    before = snapshot(root)
    with pytest.raises(PkiError) as e:
        cluster_pki(cd, clock=clock).ensure()
    assert (file, message) in [(f, m[:len(message)]) for f, m in e.value.problems]
    assert snapshot(root) == before  # nothing written
    r = CliRunner().invoke(cli, ["pki", "init", str(cd.path)])
    assert r.exit_code == 1 and f"{file}: {message}" in r.output


def test_renew_keeps_keys_and_refreshes_sans(make_cluster, clock):
    cd = make_cluster()
    cluster_pki(cd, clock=clock).ensure()
    crt = cd.pki_dir / "nodes/c0-master-0/apiserver.crt"
    old = x509.load_pem_x509_certificate(crt.read_bytes())
    key_before = (cd.pki_dir / "nodes/c0-master-0/apiserver.key").read_bytes()
    # The operator adds a name; existing certs are then stale until renewed.
    text = cd.config_path.read_text().replace("extra_sans: []", "extra_sans: [api.example.com]")
    cd.config_path.write_text(text)
    later = lambda: NOW + dt.timedelta(days=100)  # noqa: E731
    result = cluster_pki(cd, clock=later).ensure()
    assert result.stale == ["apiserver@c0-master-0", "apiserver@c0-master-1",
                            "apiserver@c0-master-2"]
    renewed = cluster_pki(cd, clock=later).renew(["apiserver@c0-master-0"])
    assert renewed == ["apiserver@c0-master-0"]
    new = x509.load_pem_x509_certificate(crt.read_bytes())
    assert new.serial_number != old.serial_number
    assert new.not_valid_after_utc - old.not_valid_after_utc == dt.timedelta(days=100)
    sans = new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "api.example.com" in sans.get_values_for_type(x509.DNSName)
    assert (cd.pki_dir / "nodes/c0-master-0/apiserver.key").read_bytes() == key_before
    assert cluster_pki(cd, clock=later).verify() == []
    assert cluster_pki(cd, clock=later).ensure().stale == ["apiserver@c0-master-1", "apiserver@c0-master-2"]


def test_renew_refuses_cas_and_unknown_names(make_cluster, clock):
    cd = make_cluster()
    cluster_pki(cd, clock=clock).ensure()
    with pytest.raises(PkiError) as e:
        cluster_pki(cd, clock=clock).renew(["ca", "nope"])
    assert e.value.problems == [("nope", "no such certificate"),
                                ("ca", "is a CA: CAs are not renewed in place")]


def test_leaf_never_outlives_its_ca(make_cluster, clock):
    """A definition whose leaves would outlive the CA does not validate; a leaf renewed when
    the CA has less left than a leaf's validity ends with the CA."""
    cd = make_cluster(pki={"key_algorithm": "ecdsa-p256", "ca_validity_days": 400,
                           "cert_validity_days": 365})
    cluster_pki(cd, clock=clock).ensure()
    later = NOW + dt.timedelta(days=100)
    cluster_pki(cd, clock=lambda: later).renew(["apiserver-kubelet-client"])
    ca = x509.load_pem_x509_certificate((cd.pki_dir / "ca.crt").read_bytes())
    leaf = x509.load_pem_x509_certificate((cd.pki_dir / "apiserver-kubelet-client.crt").read_bytes())
    assert leaf.not_valid_after_utc == ca.not_valid_after_utc == NOW + dt.timedelta(days=400)
    assert leaf.not_valid_before_utc == later - dt.timedelta(minutes=5)


def test_check_expiration_cli(make_cluster):
    cd = make_cluster(pki={"key_algorithm": "ecdsa-p256", "ca_validity_days": 3650,
                           "cert_validity_days": 20})
    runner = CliRunner()
    r = runner.invoke(cli, ["pki", "check-expiration", str(cd.path)])
    assert r.exit_code == 1 and "missing:" in r.output
    assert runner.invoke(cli, ["pki", "init", str(cd.path)]).exit_code == 0
    r = runner.invoke(cli, ["pki", "check-expiration", str(cd.path), "--days", "10"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["CERTIFICATE", "EXPIRES", "RESIDUAL", "TIME", "CERTIFICATE",
                                "AUTHORITY"]
    admin = next(line for line in lines if line.startswith("admin.conf"))
    assert admin.split()[-2:] == ["19d", "ca"]
    assert any(line.startswith("etcd-ca ") and line.split()[-1] == "9y" for line in lines)
    r = runner.invoke(cli, ["pki", "check-expiration", str(cd.path), "--days", "30", "-o", "json"])
    assert r.exit_code == 3
    out = json.loads(r.stdout)
    assert len(out["expiring"]) == 22 and "ca" not in out["expiring"]
    assert "22 certificate(s) expire within 30 days" in r.stderr
    # per node, the first leaf its config carries (the local cloud's need no credential)
    first = {n: dt.datetime.fromisoformat(t) for n, t in out["nodes"].items() if t}
    assert out["nodes"]["c0-bastion"] is None  # it carries no certificate
    assert sorted(first) == sorted(n.name for n in cd.nodes() if n.role != "bastion") and all(
        dt.timedelta(days=19) < t - dt.datetime.now(dt.UTC) <= dt.timedelta(days=20)
        for t in first.values())
    text = runner.invoke(cli, ["pki", "check-expiration", str(cd.path), "--days", "10"]).stdout
    assert "FIRST LEAF EXPIRES" in text and f"{cd.nodes()[0].name} " in text


def test_show_lists_subjects_sans_and_no_secrets(make_cluster):
    cd = make_cluster()
    runner = CliRunner()
    r = runner.invoke(cli, ["pki", "init", str(cd.path), "-o", "json"])
    assert r.exit_code == 0
    r = runner.invoke(cli, ["pki", "show", str(cd.path), "-o", "json"])
    out = json.loads(r.stdout)
    api = next(c for c in out["certificates"] if c["id"] == "apiserver@c0-master-1")
    assert api["subject"] == "CN=kube-apiserver" and api["issuer"] == "CN=kubernetes"
    assert "10.0.0.11" in api["sans"] and "kubernetes.default.svc.cluster.local" in api["sans"]
    assert out["problems"] == [] and out["missing"] == []
    text = runner.invoke(cli, ["pki", "show", str(cd.path)]).output
    assert "PRIVATE KEY" not in text and "PRIVATE KEY" not in r.output
    assert "CN=system:node:c0-worker-0,O=system:nodes" in text


def test_cli_entry_point_runs_as_module(make_cluster):
    import subprocess
    import sys
    cd = make_cluster()
    r = subprocess.run([sys.executable, "-m", "k8simg", "pki", "init", str(cd.path)],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert r.returncode == 0, r.stderr
    assert "generating ca" in r.stderr and r.stdout.startswith("28 created")
    assert "PRIVATE" not in r.stdout + r.stderr


def test_a_snapshot_key_that_is_not_one_is_named_and_kept(make_cluster, clock):
    cd = make_cluster()
    p = cluster_pki(cd, clock=clock)
    p.ensure()
    key = p.snapshot_key()
    assert p.snapshot_key() == key  # made once, then read
    path = cd.pki_dir / "etcd-snapshot.key"
    path.write_bytes(base64.b64encode(b"short") + b"\n")
    with pytest.raises(PkiError, match=r"etcd-snapshot.key: not 32 bytes in base64"):
        cluster_pki(cd, clock=clock).ensure()
    with pytest.raises(PkiError, match=r"etcd-snapshot.key: not 32 bytes in base64"):
        cluster_pki(cd, clock=clock).snapshot_key()
    assert path.read_bytes() == base64.b64encode(b"short") + b"\n"  # never replaced
    path.write_bytes(base64.b64encode(key) + b"\n")
    path.chmod(0o644)
    assert any(f == "etcd-snapshot.key" for f, _ in cluster_pki(cd, clock=clock).verify())
