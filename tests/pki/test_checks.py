"""What the PKI refuses before anything is rendered, renewed or written (#16): a private key
others can read, a file that leads out of the cluster directory, a CA that has expired or is not
valid yet, a bastion host key that does not parse. Each as a problem naming the file and the
fix; the commands that use the PKI stop with it, exit 1, no traceback."""

import base64
import datetime as dt

import pytest
import yaml

from k8simg.errors import PkiError
from k8simg.pki import cluster_pki
from tests.cli.test_cli import run
from tests.conftest import NOW


@pytest.fixture
def cd(make_cluster, clock):
    cd = make_cluster(topology="single", masters={"count": 1, "flavor": "x", "volume_size_gb": 10},
                      workers={"count": 0, "flavor": "x", "volume_size_gb": 10},
                      bastion={"enabled": True, "flavor": "x"})
    cluster_pki(cd, clock=clock).ensure()
    return cd


def problems(cd, clock) -> dict[str, str]:
    return dict(cluster_pki(cd, clock=clock).verify())


@pytest.mark.parametrize("file", ["ca.key", "sa.key", "etcd/ca.key", "kubeconfig/admin.key",
                                  "nodes/c0-master-0/apiserver.key",
                                  "ssh/bastion_host_ed25519_key"])
def test_a_private_key_readable_by_others_is_refused(cd, clock, file):
    (cd.pki_dir / file).chmod(0o644)
    assert problems(cd, clock) == {
        file: f"is a private key readable by others (mode 0644): chmod 600 {cd.pki_dir / file}"}
    with pytest.raises(PkiError, match="readable by others"):
        cluster_pki(cd, clock=clock).ensure()
    (cd.pki_dir / file).chmod(0o600)
    assert problems(cd, clock) == {}


def test_a_link_out_of_the_cluster_directory_is_refused(cd, clock, tmp_path):
    outside = tmp_path / "elsewhere.key"
    key = cd.pki_dir / "front-proxy-client.key"
    outside.write_bytes(key.read_bytes())
    outside.chmod(0o600)
    key.unlink()
    key.symlink_to(outside)
    assert problems(cd, clock) == {
        "front-proxy-client.key": f"leads to {outside}, outside the cluster's pki/: k8simg "
                                  "never follows a link out of it; put the file itself there"}
    r = run("render", cd.path, "--all")
    assert r.exit_code == 1 and "front-proxy-client.key: leads to" in r.output
    assert not (cd.path / "ignition").exists()


def test_a_link_inside_the_pki_is_fine(cd, clock):
    key = cd.pki_dir / "front-proxy-client.key"
    kept = cd.pki_dir / "kept.key"
    key.rename(kept)
    key.symlink_to(kept.name)
    assert problems(cd, clock) == {}


def test_an_expired_or_future_ca_is_refused_everywhere(cd, clock):
    later = lambda: NOW + dt.timedelta(days=3651)  # noqa: E731  (the CAs are valid 3650 days)
    found = problems(cd, later)
    assert found["ca.crt"].startswith("expired on 2036-")
    assert set(found) == {"ca.crt", "etcd/ca.crt", "front-proxy-ca.crt"}
    for use in (lambda p: p.ensure(), lambda p: p.renew()):
        with pytest.raises(PkiError, match=r"ca.crt: expired on"):
            use(cluster_pki(cd, clock=later))
    earlier = lambda: NOW - dt.timedelta(days=1)  # noqa: E731
    # (issued back-dated by five minutes, for clocks a little behind)
    assert problems(cd, earlier)["ca.crt"].startswith("is not valid until 2026-11-26 11:55 UTC")


@pytest.mark.parametrize("content", [b"garbage", b"", b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n"])
def test_a_corrupt_bastion_host_key_is_refused(cd, clock, content):
    key = cd.pki_dir / "ssh" / "bastion_host_ed25519_key"
    key.write_bytes(content)
    assert problems(cd, clock)["ssh/bastion_host_ed25519_key"].startswith(
        "not an OpenSSH private key")
    r = run("pki", "init", cd.path)
    assert r.exit_code == 1 and "ssh/bastion_host_ed25519_key: not an OpenSSH private key" in r.output
    (cd.pki_dir / "ssh" / "bastion_host_ed25519_key.pub").write_text("ssh-ed25519 !!!\n")
    assert "ssh/bastion_host_ed25519_key.pub" in problems(cd, clock)


def _files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_renew_is_all_or_nothing(cd, clock):
    """A kubeconfig that cannot be written (a folder where admin.conf belongs) stops the
    renewal before any certificate changed: nothing is half-renewed, no temporary file stays."""
    cluster_pki(cd, clock=clock).write_kubeconfigs(cd.kubeconfig_dir)
    (cd.kubeconfig_dir / "admin.conf").unlink()
    (cd.kubeconfig_dir / "admin.conf").mkdir()
    before = _files(cd.path)
    later = lambda: NOW + dt.timedelta(days=100)  # noqa: E731
    with pytest.raises(IsADirectoryError):
        cluster_pki(cd, clock=later).renew(kubeconfig_dir=cd.kubeconfig_dir)
    assert _files(cd.path) == before
    r = run("pki", "renew", cd.path)
    assert r.exit_code == 1 and "kubeconfigs/admin.conf: Is a directory" in r.output
    assert _files(cd.path) == before

    (cd.kubeconfig_dir / "admin.conf").rmdir()
    renewed = cluster_pki(cd, clock=later).renew(kubeconfig_dir=cd.kubeconfig_dir)
    assert "admin" in renewed and "front-proxy-client" in renewed
    after = _files(cd.path)
    admin_crt = after["pki/kubeconfig/admin.crt"]
    assert admin_crt != before["pki/kubeconfig/admin.crt"]
    conf = yaml.safe_load(after["kubeconfigs/admin.conf"])
    assert base64.b64decode(conf["users"][0]["user"]["client-certificate-data"]) == admin_crt
    assert not [p for p in cd.path.rglob(".*.tmp")]
