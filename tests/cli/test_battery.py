"""The bad-input battery (issue 16): every case is a definition, a file or a command line an
operator could get wrong. Each must end in a message naming the field or file, exit code 1 or
2, no traceback, and nothing written or changed. A case the code accepts is a failure.

The other slices of the battery: tests/cli/test_bad_input.py (files that cannot be read, SSH
keys, state.json, folders), tests/pki/test_checks.py (keys, links, CAs),
tests/ops/bake/test_archives.py (artifact archives).
"""


import pytest

from tests.cli.test_cli import run
from tests.conftest import edit_cluster, write_cluster
from tests.support import snapshot

SMALL = {"topology": "single", "masters__count": 1, "workers__count": 0,
         "bastion__enabled": False}


# -- cluster.yaml: (field as written, value, the field the message names, words) ----------------
FIELDS = [
    ("name", "", "name", "must be a DNS label"),
    ("name", "Prod", "name", "must be a DNS label"),
    ("name", "a/b", "name", "must be a DNS label"),
    ("name", "-lead", "name", "must be a DNS label"),
    ("name", "x" * 41, "name", "at most 40 characters"),
    ("name", "trail-", "name", "must be a DNS label"),
    ("name", 5, "name", "valid string"),
    ("name", None, "name", "valid string"),
    ("kubernetes_version", "1.99.0", "kubernetes_version", "is not one of"),
    ("kubernetes_version", "latest", "kubernetes_version", "is not one of"),
    ("kubernetes_version", "v1.35.2", "kubernetes_version", "is not one of"),
    ("cloud", "", "cloud", "at least 1 character"),
    ("image", "", "image", "at least 1 character"),
    ("topology", "mesh", "topology", "'single', 'one-master' or 'ha'"),
    ("topology", ["ha"], "topology", "'single', 'one-master' or 'ha'"),
    ("masters__count", 0, "masters.count", "HA needs an odd number"),
    ("masters__count", 2, "masters.count", "HA needs an odd number"),
    ("masters__count", 7, "masters.count", "HA supports 3 or 5 masters"),
    ("masters__count", -1, "masters.count", "greater than or equal to 0"),
    ("masters__count", "three", "masters.count", "valid integer"),
    ("masters__count", 1.5, "masters.count", "valid integer"),
    ("masters__flavor", "", "masters.flavor", "at least 1 character"),
    ("masters__volume_size_gb", 0, "masters.volume_size_gb", "greater than or equal to 10"),
    ("masters__volume_size_gb", 99999, "masters.volume_size_gb", "less than or equal to 16384"),
    ("masters__volume_size_gb", "big", "masters.volume_size_gb", "valid integer"),
    ("masters__flavour", "m1", "masters.flavour", "unknown key"),
    ("workers__count", -1, "workers.count", "greater than or equal to 0"),
    ("workers__count", 501, "workers.count", "less than or equal to 500"),
    ("workers", "two", "workers", "valid dictionary"),
    ("etcd__placement", "sideways", "etcd.placement", "'stacked' or 'dedicated'"),
    ("etcd__count", 8, "etcd.count", "less than or equal to 7"),
    ("etcd__flavor", "", "etcd.flavor", "at least 1 character"),
    ("bastion__enabled", "maybe", "bastion.enabled", "valid boolean"),
    ("bastion__flavor", "", "bastion.flavor", "at least 1 character"),
    ("bastion__allowed_cidrs", ["not-a-cidr"], "bastion.allowed_cidrs.0", "IPv4 network"),
    ("bastion__allowed_cidrs", ["10.0.0.1/24"], "bastion.allowed_cidrs.0", "IPv4 network"),
    ("bastion__allowed_cidrs", "0.0.0.0/0", "bastion.allowed_cidrs", "valid list"),
    ("bastion__ssh_authorized_keys", ["ssh-ed25519 AAAA garbage"],
     "bastion.ssh_authorized_keys", "not an OpenSSH public key"),
    ("bastion__ssh_authorized_keys", ["-----BEGIN OPENSSH PRIVATE KEY-----"],
     "bastion.ssh_authorized_keys", "is a private key"),
    ("network__node_cidr", "10.0.0.0/33", "network.node_cidr", "IPv4 network"),
    ("network__node_cidr", "banana", "network.node_cidr", "IPv4 network"),
    ("network__node_cidr", "10.0.0.7/24", "network.node_cidr", "IPv4 network"),
    ("network__node_cidr", "10.244.0.0/24", "network.pod_cidr", "overlaps network.node_cidr"),
    ("network__pod_cidr", "10.0.0.0/16", "network.pod_cidr", "overlaps"),
    ("network__pod_cidr", "10.244.0.0/24", "network.pod_cidr", "too few /24 node ranges"),
    ("network__service_cidr", "10.244.0.0/16", "network.pod_cidr",
     "overlaps network.service_cidr"),
    ("network__service_cidr", "10.96.0.0/25", "network.service_cidr", "at least a /24"),
    ("network__dns_domain", "", "network.dns_domain", "should match"),
    ("network__dns_domain", "Cluster.Local", "network.dns_domain", "should match"),
    ("network__dns_domain", "-bad.local", "network.dns_domain", "should match"),
    ("network__dns_nameservers", ["dns.example"], "network.dns_nameservers.0", "IPv4 address"),
    ("network__dns_nameservers", "8.8.8.8", "network.dns_nameservers", "valid list"),
    ("api__port", 0, "api.port", "greater than or equal to 1"),
    ("api__port", 70000, "api.port", "less than or equal to 65535"),
    ("api__port", "https", "api.port", "valid integer"),
    ("api__extra_sans", ["has space"], "api.extra_sans", "neither an IP address nor a DNS name"),
    ("api__extra_sans", ["a..b"], "api.extra_sans", "neither an IP address nor a DNS name"),
    ("api__allowed_cidrs", ["300.0.0.0/8"], "api.allowed_cidrs.0", "IPv4 network"),
    ("api__floating_ip", "not-an-ip", "api.floating_ip", "IPv4 address"),
    ("api__floating_ip", "2001:db8::1", "api.floating_ip", "IPv4 address"),
    ("openstack__external_network", "", "openstack.external_network", "at least 1 character"),
    ("openstack__credential_roles", [], "openstack.credential_roles", "at least 1 item"),
    ("openstack__credential_roles", ["member", "member"], "openstack.credential_roles",
     "a role is listed twice"),
    ("openstack__credential_roles", [""], "openstack.credential_roles.0",
     "at least 1 character"),
    ("openstack__credential_roles", "member", "openstack.credential_roles", "valid list"),
    ("openstack__region", "RegionOne", "openstack.region", "unknown key"),
    ("local__memory_mb", 100, "local.memory_mb", "greater than or equal to 512"),
    ("local__cpus", 0, "local.cpus", "greater than or equal to 1"),
    ("local__accel", "hvf", "local.accel", "'tcg' or 'kvm'"),
    ("local__cpu_model", "max -S", "local.cpu_model", "should match pattern"),
    ("local__boot_timeout_s", 5, "local.boot_timeout_s", "greater than or equal to 30"),
    ("pki__key_algorithm", "dsa", "pki.key_algorithm", "'ecdsa-p256'"),
    ("pki__ca_validity_days", 0, "pki.ca_validity_days", "greater than or equal to 1"),
    ("pki__cert_validity_days", 5000, "pki.cert_validity_days", "less than or equal to 3650"),
    ("mastres", {"count": 3}, "mastres", "unknown key"),
]


@pytest.mark.parametrize("field,value,named,words", FIELDS,
                         ids=[f"{f}={v!r}"[:60] for f, v, _, _ in FIELDS])
def test_a_bad_field_is_named_and_nothing_is_written(tmp_path, field, value, named, words):
    cd = write_cluster(tmp_path / "c", **{field: value})
    before = snapshot(tmp_path)
    for args in (["config", "validate", cd.path], ["pki", "init", cd.path],
                 ["deploy", cd.path, "--plan"]):
        r = run(*args)
        assert r.exit_code == 2, (args, r.output)
        assert f"{named} (line" in r.output and words in r.output, (args, r.output)
    assert snapshot(tmp_path) == before


def test_a_certificate_validity_past_the_cas_is_refused(tmp_path):
    cd = write_cluster(tmp_path / "c", pki__ca_validity_days=30, pki__cert_validity_days=365)
    r = run("config", "validate", cd.path)
    assert r.exit_code == 2, r.output
    assert "pki.cert_validity_days (line" in r.output and "outlive" in r.output


# -- command lines: (what, arguments given the cluster directory, exit code, words) ------------
def _cluster(tmp_path):
    return write_cluster(tmp_path / "c", **SMALL)


def _pki(cd) -> bool:
    r = run("pki", "init", cd.path)
    assert r.exit_code == 0, r.output
    return True


COMMANDS = [
    ("validate a folder without cluster.yaml", lambda cd, t: ["config", "validate", t / "none"],
     2, "cluster.yaml"),
    ("deploy a folder without cluster.yaml", lambda cd, t: ["deploy", t / "none", "--plan"],
     2, "cluster.yaml"),
    ("destroy a folder without cluster.yaml", lambda cd, t: ["destroy", t / "none"],
     2, "cluster.yaml"),
    ("nodes of a folder without cluster.yaml", lambda cd, t: ["nodes", t / "none"],
     2, "cluster.yaml"),
    ("upgrade a folder without cluster.yaml", lambda cd, t: ["upgrade", t / "none", "--plan"],
     2, "cluster.yaml"),
    ("render a node the cluster does not have",
     lambda cd, t: _pki(cd) and ["render", cd.path, "--node", "c-worker-9"], 1, "c-worker-9"),
    ("render a node of another cluster",
     lambda cd, t: _pki(cd) and ["render", cd.path, "--node", "other-master-0"], 1,
     "other-master-0"),
    ("render every node with --out (one file)",
     lambda cd, t: _pki(cd) and ["render", cd.path, "--all", "--out", cd.config_path], 2,
     "--out goes with --node"),
    ("render one node with --out-dir",
     lambda cd, t: _pki(cd) and ["render", cd.path, "--node", "c-master-0", "--out-dir", t],
     2, "--out-dir goes with --all"),
    ("render one node without --out",
     lambda cd, t: _pki(cd) and ["render", cd.path, "--node", "c-master-0"], 2,
     "--node needs --out FILE"),
    ("render with neither --node nor --all",
     lambda cd, t: ["render", cd.path], 2, "exactly one of --node NAME and --all"),
    ("render before pki init", lambda cd, t: ["render", cd.path, "--node", "c-master-0"],
     1, "pki init"),
    ("init where a cluster is", lambda cd, t: ["init", cd.path], 1, "already exists"),
    ("init an unknown Kubernetes version",
     lambda cd, t: ["init", t / "n", "--kubernetes-version", "1.0.0"], 2, "kubernetes_version"),
    ("init a negative worker count", lambda cd, t: ["init", t / "n", "--workers", "-1"],
     2, "--workers"),
    ("init a worker count past the limit", lambda cd, t: ["init", t / "n", "--workers", "501"],
     2, "--workers"),
    ("init with a key file that is missing",
     lambda cd, t: ["init", t / "n", "--ssh-public-key", t / "missing.pub"], 2,
     "missing.pub"),
    ("init with a folder as the key file",
     lambda cd, t: ["init", t / "n", "--ssh-public-key", t], 2, "--ssh-public-key"),
    ("an unknown output format", lambda cd, t: ["config", "validate", cd.path, "-o", "xml"],
     2, "--output"),
    ("deploy with an unknown cloud name", lambda cd, t: ["deploy", cd.path, "--cloud",
                                                          "no-such-cloud", "--plan"],
     1, "no-such-cloud"),
    ("a concurrency of zero", lambda cd, t: ["deploy", cd.path, "--concurrency", "0"],
     2, "--concurrency"),
    ("pki renew before pki init", lambda cd, t: ["pki", "renew", cd.path, "apiserver"], 1,
     "pki init"),
    ("pki renew of a name the PKI does not have",
     lambda cd, t: _pki(cd) and ["pki", "renew", cd.path, "no-such-cert"], 1, "no-such-cert"),
    ("pki renew of the CA",
     lambda cd, t: _pki(cd) and ["pki", "renew", cd.path, "ca"], 1, "ca"),
    ("image show of a manifest that is missing",
     lambda cd, t: ["image", "show", t / "none.manifest.json"], 2, "none.manifest.json"),
    ("image show of a manifest that is not JSON",
     lambda cd, t: (t / "bad.manifest.json").write_text("{") and (t / "bad.qcow2").write_text(
         "x") and ["image", "show", t / "bad.qcow2"],
     1, "bad.manifest.json"),
    ("bake from an artifacts folder that is missing",
     lambda cd, t: ["bake", "--artifacts", t / "none", "--output", t / "out"], 2, "none"),
    ("config show of a broken cluster.yaml",
     lambda cd, t: edit_cluster(cd, api__port=0) and ["config", "show", cd.path], 2,
     "api.port"),
    ("console of a node the cluster does not have",
     lambda cd, t: ["console", cd.path, "c-worker-7"], 1, "c-worker-7"),
    ("etcd snapshot of a cluster without its snapshot key",
     lambda cd, t: ["etcd", "snapshot", cd.path], 1, "etcd-snapshot.key: missing"),
    ("etcd snapshot of a cluster that is not deployed",
     lambda cd, t: _pki(cd) and ["etcd", "snapshot", cd.path], 1, "deploy it first"),
    ("etcd snapshot keeping none", lambda cd, t: ["etcd", "snapshot", cd.path, "--keep", "0"],
     2, "--keep"),
    ("etcd snapshots of a folder that is a file",
     lambda cd, t: ["etcd", "snapshots", cd.path, "--in", cd.config_path], 2, "--in"),
]


@pytest.mark.parametrize("what,args,code,words", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_a_bad_command_line_is_named_and_nothing_is_written(tmp_path, what, args, code, words):
    cd = _cluster(tmp_path)
    argv = args(cd, tmp_path)
    before = snapshot(tmp_path)
    r = run(*argv)
    assert r.exit_code == code, r.output
    assert words in r.output, r.output
    assert snapshot(tmp_path) == before


# -- files in the cluster directory: (what, how it is spoilt, command, words) ------------------
def _state(text):
    def spoil(cd):
        (cd.path / "state.json").write_text(text)
    return spoil


def _file(rel, content):
    def spoil(cd):
        p = cd.path / rel
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        p.write_text(content)
        p.chmod(0o600)
    return spoil


FILES = [
    ("a UID that is a number", _state('{"uid": 5}'), ["deploy", "{c}", "--plan"],
     "state.json: uid: expected 16 lowercase hex digits"),
    ("a UID that is not hex", _state('{"uid": "not-a-uid-at-all"}'),
     ["deploy", "{c}", "--plan"], "state.json: uid: expected 16 lowercase hex digits"),
    ("a UID in capitals", _state('{"uid": "ABCDEF0123456789"}'), ["config", "show", "{c}"],
     "state.json: uid"),
    ("a state file that is a string", _state('"x"'), ["config", "show", "{c}"],
     "state.json: not a JSON object"),
    ("replacements that are a list", _state('{"upgrade": {"image": "i", "replacing": [1]}}'),
     ["deploy", "{c}", "--plan"], "state.json: upgrade"),
    ("a credential file that is not JSON", _file("openstack/application-credential.json", "{"),
     ["render", "{c}", "--node", "c-master-0"], "application-credential.json"),
    ("a credential file without a secret",
     _file("openstack/application-credential.json",
           '{"auth_url": "x", "application_credential_id": "y"}'),
     ["render", "{c}", "--node", "c-master-0"], "application-credential.json"),
    ("a local process table that is not JSON", _file("local/processes.json", "{"),
     ["destroy", "{c}", "--plan"], "processes.json: not valid JSON"),
    ("a local process table of the wrong shape", _file("local/processes.json", '{"x": 5}'),
     ["destroy", "{c}", "--plan"], "processes.json: not a process table"),
]


@pytest.mark.parametrize("what,spoil,args,words", FILES, ids=[f[0] for f in FILES])
def test_a_spoilt_file_is_named_and_nothing_is_written(tmp_path, monkeypatch, what, spoil, args,
                                                       words):
    cd = _cluster(tmp_path)
    if args[0] == "render":
        edit_cluster(cd, cloud="k8simg-test")
        _pki(cd)
    spoil(cd)
    before = snapshot(tmp_path)
    r = run(*[str(a).replace("{c}", str(cd.path)) for a in args])
    assert r.exit_code in (1, 2), r.output
    assert words in r.output, r.output
    assert snapshot(tmp_path) == before
