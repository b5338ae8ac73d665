"""Bad input from the command line: each case gets a message that names the file or field,
exit code 1 or 2, never a traceback, and nothing written or changed (the first slice of the
bad-input battery of issue 16)."""

import os
import subprocess

import pytest

from tests.cli.test_cli import run
from tests.conftest import edit_cluster, write_cluster
from tests.support import snapshot

# (what is wrong, cluster.yaml overrides, the field named, words of the message)
DEFINITIONS = [
    ("API port on etcd's client port", {"api__port": 2379}, "api.port", "etcd's client port"),
    ("API port on etcd's peer port", {"api__port": 2380}, "api.port", "etcd's peer port"),
    ("API port on the kubelet's", {"api__port": 10250}, "api.port", "the kubelet's port"),
    ("API port on SSH", {"api__port": 22}, "api.port", "SSH"),
    ("API port among NodePorts", {"api__port": 30080}, "api.port", "NodePort range"),
    ("service range too small for DNS", {"network__service_cidr": "10.96.0.0/29"},
     "network.service_cidr", "needs at least a /24"),
    ("node range too large", {"network__node_cidr": "10.0.0.0/8",
                              "network__pod_cidr": "172.16.0.0/16",
                              "network__service_cidr": "192.168.0.0/16"},
     "network.node_cidr", "at most a /16"),
]


@pytest.mark.parametrize("what,over,field,words", DEFINITIONS, ids=[d[0] for d in DEFINITIONS])
def test_a_broken_setup_does_not_validate(tmp_path, what, over, field, words):
    cd = write_cluster(tmp_path / "c", **over)
    before = snapshot(tmp_path)
    r = run("config", "validate", cd.path)
    assert r.exit_code == 2, r.output
    assert f"{field} (line" in r.output and words in r.output
    assert snapshot(tmp_path) == before


def test_a_sixteen_is_still_fine(tmp_path):
    cd = write_cluster(tmp_path / "c", network__node_cidr="10.0.0.0/16",
                       network__service_cidr="10.96.0.0/24")
    assert run("config", "validate", cd.path).exit_code == 0


@pytest.mark.parametrize("what,content,words", [
    ("a byte that is not UTF-8", b"name: c\n\xff\n", "not UTF-8 text: byte 0xff on line 2"),
    ("a YAML alias bomb", b"name: c\na: &a [x, x, x, x, x, x, x, x, x]\n"
                          b"b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                          b"c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
                          b"d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n",
     "line 3: YAML aliases (*a) are not allowed"),
    ("an enormous file", b"name: c\n# " + b"x" * 300_000 + b"\n",
     "a cluster definition is at most"),
    ("not YAML at all", b"name: [c\n", "not valid YAML"),
    ("a list at the top", b"- name: c\n", "the top level must be a mapping"),
])
def test_a_cluster_yaml_that_cannot_be_read(tmp_path, what, content, words):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "cluster.yaml").write_bytes(content)
    before = snapshot(tmp_path)
    r = run("config", "validate", tmp_path / "c")
    assert r.exit_code == 2, r.output
    assert "cluster.yaml" in r.output and words in r.output
    assert snapshot(tmp_path) == before


def _private_key(tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "id")],
                   check=True)
    return (tmp_path / "id").read_bytes()


@pytest.mark.parametrize("what,content,words", [
    ("not UTF-8", lambda _t: b"\xff\xfe", "not UTF-8 text: byte 0xff on line 1"),
    ("garbage", lambda _t: b"ssh-ed25519 AAAA not-base64\n", "is not an OpenSSH public key"),
    ("an unsupported kind", lambda _t: b"ssh-foo AAAAB3NzaC1yc2E= me\n", "is not a"),
    ("the private key", _private_key, "is a private key: give the public one"),
    ("empty", lambda _t: b"", "is not an OpenSSH public key"),
])
def test_init_with_a_bad_ssh_public_key_file(tmp_path, what, content, words):
    key = tmp_path / "key.pub"
    key.write_bytes(content(tmp_path))
    before = snapshot(tmp_path)
    r = run("init", tmp_path / "c", "--ssh-public-key", key)
    assert r.exit_code == 2, r.output
    assert str(key) in r.output and words in r.output
    assert snapshot(tmp_path) == before and not (tmp_path / "c").exists()


@pytest.mark.parametrize("name", ["", ".", "  "])
def test_init_refuses_the_current_directory(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    r = run("init", name)
    assert r.exit_code == 2 and "Invalid value for NAME" in r.output
    assert list(tmp_path.iterdir()) == []


def test_an_unreadable_cluster_yaml_is_named(tmp_path):
    cd = write_cluster(tmp_path / "c")
    edit_cluster(cd)
    cd.config_path.chmod(0)
    try:
        if os.access(cd.config_path, os.R_OK):  # root reads anything: make it a folder
            cd.config_path.chmod(0o600)
            cd.config_path.unlink()
            cd.config_path.mkdir()
        r = run("config", "validate", cd.path)
        assert r.exit_code == 2 and "cluster.yaml" in r.output and "cannot read" in r.output
    finally:
        if cd.config_path.is_file():
            cd.config_path.chmod(0o600)


@pytest.mark.parametrize("state,words", [
    ("[]", "state.json: not a JSON object"),
    ('{"nodes": "x"}', "state.json: nodes: expected a list of <role>-<index>"),
    ('{"nodes": ["gpu-1"]}', "state.json: nodes: 'gpu-1' is not <role>-<index>"),
    ('{"upgrade": 5}', "state.json: upgrade:"),
    ("{not json", "state.json: not valid JSON"),
])
def test_a_state_file_of_the_wrong_shape_is_named(tmp_path, state, words):
    cd = write_cluster(tmp_path / "c", topology="single", masters__count=1, workers__count=0,
                       bastion__enabled=False)
    (cd.path / "state.json").write_text(state)
    before = snapshot(tmp_path)
    # pki init reads the node set; deploy reads it and the upgrade under way
    for args in ([["deploy", cd.path, "--plan"]] if "upgrade" in state else
                 [["pki", "init", cd.path], ["deploy", cd.path, "--plan"]]):
        r = run(*args)
        assert r.exit_code == 1 and words in r.output, (args, r.output)
    assert snapshot(tmp_path) == before


def test_a_file_where_a_folder_belongs_is_named(tmp_path):
    cd = write_cluster(tmp_path / "c", topology="single", masters__count=1, workers__count=0,
                       bastion__enabled=False)
    (cd.path / "pki").write_text("not a folder")
    r = run("pki", "init", cd.path)
    assert r.exit_code == 1
    assert f"{cd.path / 'pki'}" in r.output and "a file stands where a folder is expected" in r.output
    (cd.path / "pki").unlink()
    assert run("pki", "init", cd.path).exit_code == 0
    before = snapshot(tmp_path)
    r = run("render", cd.path, "--node", "c-master-0", "--out", cd.config_path / "x.ign")
    assert r.exit_code == 1 and "cluster.yaml" in r.output and "folder is expected" in r.output
    assert snapshot(tmp_path) == before


def test_a_truncated_certificate_is_reported_not_raised(tmp_path):
    cd = write_cluster(tmp_path / "c", topology="single", masters__count=1, workers__count=0,
                       bastion__enabled=False)
    assert run("pki", "init", cd.path).exit_code == 0
    crt = cd.pki_dir / "apiserver-kubelet-client.crt"
    crt.write_bytes(crt.read_bytes()[:100])
    r = run("pki", "show", cd.path)
    assert "problem: apiserver-kubelet-client.crt: not a PEM certificate" in r.output
    r = run("pki", "check-expiration", cd.path)
    assert r.exit_code == 1 and "apiserver-kubelet-client.crt: not a PEM certificate" in r.output
