import pytest
from click.testing import CliRunner

from k8simg.cli import cli
from k8simg.errors import ConfigError, K8simgError
from k8simg.model.cluster import init_cluster
from k8simg.model.config import ClusterConfig
from k8simg.model.plan import api_vip, initial_nodes
from k8simg.model.template import render_template
from k8simg.model.validate import parse_config

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGc5Vw6ODvYqPzgxHC3Pq3pW5v5Vu9rX8mWl8J2B8vAQ op@desk"


def problems_of(text: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "cluster.yaml")
    return e.value.problems


def edited(**changes) -> str:
    """The generated template with ``key: value`` lines replaced (``section.key``)."""
    text = render_template("demo")
    for dotted, value in changes.items():
        section, _, key = dotted.rpartition(".")
        lines, out, in_section = text.splitlines(), [], not section
        for line in lines:
            if section and line.startswith(f"{section}:"):
                in_section = True
            elif section and line and not line.startswith((" ", "#")):
                in_section = False
            indent = "  " if section else ""
            if in_section and line.startswith(f"{indent}{key}:"):
                line = f"{indent}{key}: {value}"
            out.append(line)
        text = "\n".join(out) + "\n"
    return text


def test_template_is_valid_and_holds_the_seed_defaults():
    cfg = parse_config(render_template("demo"))
    assert cfg == ClusterConfig(name="demo")
    assert (cfg.topology, cfg.masters.count, cfg.workers.count) == ("ha", 3, 2)
    assert (cfg.masters.volume_size_gb, cfg.workers.volume_size_gb) == (25, 50)
    assert cfg.bastion.enabled and cfg.etcd.placement == "stacked"
    assert cfg.pki.key_algorithm == "ecdsa-p256"
    assert (cfg.pki.ca_validity_days, cfg.pki.cert_validity_days) == (3650, 365)


def test_template_keeps_comments():
    text = render_template("demo")
    assert "# single: one node runs everything" in text
    assert text.count("#") > 20


def test_plan_is_deterministic():
    cfg = parse_config(render_template("demo"))
    nodes = initial_nodes(cfg)
    assert [(n.name, str(n.address)) for n in nodes] == [
        ("demo-master-0", "10.0.0.10"), ("demo-master-1", "10.0.0.11"),
        ("demo-master-2", "10.0.0.12"), ("demo-worker-0", "10.0.0.100"),
        ("demo-worker-1", "10.0.0.101"), ("demo-bastion", "10.0.0.90")]
    assert str(api_vip(cfg)) == "10.0.0.5"


@pytest.mark.parametrize("changes, path, message", [
    ({"masters.count": 4}, "masters.count", "HA needs an odd number >= 3, got 4"),
    ({"masters.count": 1}, "masters.count", "HA needs an odd number >= 3, got 1"),
    ({"masters.count": 7}, "masters.count", "HA supports 3 or 5 masters, got 7"),
    ({"topology": "single"}, "masters.count", "topology single has exactly 1 master, got 3"),
    ({"network.pod_cidr": "10.0.0.0/16"}, "network.pod_cidr",
     "10.0.0.0/16 overlaps network.node_cidr 10.0.0.0/24"),
    ({"network.service_cidr": "10.240.0.0/12"}, "network.pod_cidr",
     "10.244.0.0/16 overlaps network.service_cidr 10.240.0.0/12"),
    ({"network.node_cidr": "10.0.0.0/25"}, "network.node_cidr", "needs at least a /24"),
    ({"network.service_cidr": "10.64.0.0/11"}, "network.service_cidr", "at most a /12"),
    ({"kubernetes_version": '"1.20.0"'}, "kubernetes_version", "'1.20.0' is not one of"),
    ({"masters.count": "three"}, "masters.count", "valid integer"),
    ({"topology": "mesh"}, "topology", "Input should be 'single', 'one-master' or 'ha'"),
    ({"name": "Bad_Name"}, "name", "must be a DNS label"),
    ({"pki.key_algorithm": "dsa-1024"}, "pki.key_algorithm", "Input should be"),
    ({"api.extra_sans": '["ok.example.com", "not a name"]'}, "api.extra_sans",
     "'not a name' is neither an IP address nor a DNS name"),
    ({"bastion.ssh_authorized_keys": '["ssh-rsa AAAAnotakey"]'}, "bastion.ssh_authorized_keys",
     "entry 0 is not an OpenSSH public key"),
    ({"workers.volume_size_gb": 1}, "workers.volume_size_gb", "greater than or equal to 10"),
])
def test_bad_values_name_their_path(changes, path, message):
    found = problems_of(edited(**changes))
    assert any(p.startswith(path + " (line ") and message in m for p, m in found), found


def test_unknown_keys_are_rejected_with_their_line():
    text = render_template("demo").replace("masters:\n", "masters:\n  cont: 3\n") + "extra: 1\n"
    found = problems_of(text)
    paths = {p.split(" ")[0] for p, m in found if m == "unknown key"}
    assert paths == {"masters.cont", "extra"}
    line = next(p for p, _ in found if p.startswith("masters.cont"))
    expected = render_template("demo").splitlines().index("masters:") + 2
    assert line.endswith(f"(line {expected})")


def test_every_problem_is_reported_at_once():
    found = problems_of(edited(**{"masters.count": 4, "network.pod_cidr": "10.0.0.0/8"}))
    assert {p.split(" ")[0] for p, _ in found} >= {"masters.count", "network.pod_cidr"}


def test_shape_errors_all_at_once():
    found = problems_of(edited(**{"masters.count": "x", "workers.count": -1, "cloud": '""'}))
    assert {p.split(" ")[0] for p, _ in found} == {"masters.count", "workers.count", "cloud"}


def test_dedicated_etcd_and_topologies():
    ok = parse_config(edited(**{"etcd.placement": "dedicated", "etcd.count": 5}))
    assert [n.name for n in initial_nodes(ok) if n.role == "etcd"] == [
        f"demo-etcd-{i}" for i in range(5)]
    assert ("etcd.count (line", "dedicated etcd needs 3 or 5 members, got 4") in [
        (p[:16], m) for p, m in problems_of(edited(**{"etcd.placement": "dedicated", "etcd.count": 4}))]
    single = parse_config(edited(**{"topology": "single", "masters.count": 1, "workers.count": 0}))
    assert [n.role for n in initial_nodes(single)] == ["master", "bastion"]
    assert any(p.startswith("workers.count") and "at least 1 worker" in m for p, m in problems_of(
        edited(**{"topology": "one-master", "masters.count": 1, "workers.count": 0})))


def test_too_many_workers_for_the_subnet():
    found = problems_of(edited(**{"workers.count": 155}))
    assert parse_config(edited(**{"workers.count": 154}))
    assert any(p.startswith("workers.count") and "do not fit network.node_cidr" in m
               for p, m in found)
    assert parse_config(edited(**{"workers.count": 200, "network.node_cidr": "10.0.0.0/22"}))


def test_yaml_errors_and_duplicates():
    assert "not valid YAML" in problems_of("name: [unclosed\n")[0][1]
    assert "not valid YAML" in problems_of("name: a\nname: b\n")[0][1]
    assert problems_of("- a list\n") == [("", "the top level must be a mapping")]


def test_valid_ssh_key_is_accepted(tmp_path):
    key = tmp_path / "id.pub"
    key.write_text(ED25519 + "\n")
    r = CliRunner().invoke(cli, ["init", str(tmp_path / "demo"), "--ssh-public-key", str(key)])
    assert r.exit_code == 0, r.output
    cfg = parse_config((tmp_path / "demo" / "cluster.yaml").read_text())
    assert cfg.bastion.ssh_authorized_keys == [ED25519]


def test_init_writes_nothing_for_bad_input(tmp_path):
    key = tmp_path / "bad.pub"
    key.write_text("ssh-ed25519 garbage\n")
    r = CliRunner().invoke(cli, ["init", str(tmp_path / "demo"), "--ssh-public-key", str(key)])
    assert r.exit_code == 2
    # named as the operator gave it: the key file, not the cluster.yaml init would write
    assert f"{key}: 1 problem(s)" in r.output
    assert "--ssh-public-key: the file is not an OpenSSH public key" in r.output
    r = CliRunner().invoke(cli, ["init", str(tmp_path / "demo"), "--kubernetes-version", "1.2.3"])
    assert r.exit_code == 2 and "'1.2.3' is not one of" in r.output
    assert not (tmp_path / "demo").exists()


def test_init_never_overwrites(tmp_path):
    cd = init_cluster(tmp_path / "demo")
    cd.config_path.write_text(cd.config_path.read_text() + "# mine\n")
    with pytest.raises(K8simgError, match="already exists"):
        init_cluster(tmp_path / "demo")
    assert cd.config_path.read_text().endswith("# mine\n")
    assert cd.config_path.stat().st_mode & 0o777 == 0o600


def test_validate_cli_reports_all_and_exits_nonzero(make_cluster):
    cd = make_cluster(masters__count=4, network__pod_cidr="10.0.0.0/16")
    before = sorted(p.name for p in cd.path.iterdir())
    r = CliRunner().invoke(cli, ["config", "validate", str(cd.path)])
    assert r.exit_code == 2
    assert "masters.count (line" in r.output and "HA needs an odd number >= 3, got 4" in r.output
    assert "network.pod_cidr (line" in r.output
    # Every command that reads the file refuses it too, and writes nothing.
    r = CliRunner().invoke(cli, ["pki", "init", str(cd.path)])
    assert r.exit_code == 2 and "HA needs an odd number" in r.output
    assert sorted(p.name for p in cd.path.iterdir()) == before == ["cluster.yaml", "state.json"]


def test_validate_json(make_cluster):
    cd = make_cluster()
    r = CliRunner().invoke(cli, ["config", "validate", str(cd.config_path), "-o", "json"])
    assert r.exit_code == 0
    import json
    out = json.loads(r.stdout)
    assert out["valid"] and out["api_vip"] == "10.0.0.5" and len(out["nodes"]) == 6


def test_missing_file_is_a_clear_error(tmp_path):
    r = CliRunner().invoke(cli, ["config", "validate", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "nope/cluster.yaml" in r.output and "cannot read" in r.output


def test_etcd_timing_defaults_and_the_five_heartbeat_rule(make_cluster):
    from k8simg.errors import ConfigError

    assert make_cluster(cloud="k8simg-test").load().etcd_timing() == (100, 1000)
    assert make_cluster(cloud="local").load().etcd_timing() == (500, 5000)  # emulated
    assert make_cluster(cloud="local", local__accel="kvm").load().etcd_timing() == (100, 1000)
    assert make_cluster(etcd__heartbeat_ms=250).load().etcd_timing() == (250, 5000)
    assert make_cluster(cloud="x", etcd__heartbeat_ms=250).load().etcd_timing() == (250, 2500)
    cd = make_cluster(cloud="x", etcd__heartbeat_ms=300, etcd__election_ms=1000)
    with pytest.raises(ConfigError, match=r"etcd.election_ms \(line \d+\): 1000 ms is less than "
                                          r"5 heartbeats \(300 ms each\)"):
        cd.load()
