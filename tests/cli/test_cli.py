"""The command line as an operator meets it: results on stdout, every failure a message that
names the field or file with its exit code, never a traceback."""

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from k8simg.cli import cli
from tests.conftest import write_cluster


def run(*args: str):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    return result


def test_init_then_validate_as_json(tmp_path):
    r = run("init", tmp_path / "demo", "--workers", "1", "-o", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["config"] == str(tmp_path / "demo" / "cluster.yaml")
    r = run("config", "validate", tmp_path / "demo", "-o", "json")
    out = json.loads(r.stdout)
    assert r.exit_code == 0 and out["valid"] is True and out["api_vip"] == "10.0.0.5"
    assert [n["name"] for n in out["nodes"]] == ["demo-master-0", "demo-master-1",
                                                 "demo-master-2", "demo-worker-0",
                                                 "demo-bastion"]
    again = run("init", tmp_path / "demo")
    assert again.exit_code == 1 and "already exists; not overwriting it" in again.output


def test_an_invalid_definition_names_every_field_and_line(tmp_path):
    cd = write_cluster(tmp_path / "bad", masters__count=2, network__pod_cidr="10.0.0.0/16")
    r = run("config", "validate", cd.path)
    assert r.exit_code == 2
    assert "masters.count (line" in r.output and "HA needs an odd number >= 3, got 2" in r.output
    assert "network.pod_cidr (line" in r.output and "overlaps" in r.output


def test_deploy_plan_on_the_local_cloud_without_an_image_is_a_preflight_error(tmp_path):
    cd = write_cluster(tmp_path / "pf", image=str(tmp_path / "missing.qcow2"),
                       topology="single", masters__count=1, workers__count=0,
                       bastion__enabled=False)
    r = run("deploy", cd.path, "--plan", "-o", "json")
    assert r.exit_code == 2
    assert "preflight on the local cloud failed; nothing was created" in r.output
    assert f"image: {tmp_path / 'missing.qcow2'}: no such file" in r.output


def test_an_openstack_cloud_that_is_not_configured_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(tmp_path / "clouds.yaml"))
    (tmp_path / "clouds.yaml").write_text("clouds: {}\n")
    cd = write_cluster(tmp_path / "os", cloud="nowhere")
    for args in (["deploy", cd.path, "--plan"], ["nodes", cd.path], ["destroy", cd.path, "--plan"]):
        r = run(*args)
        assert r.exit_code == 1 and "cloud 'nowhere'" in r.output, (args, r.output)


def test_etcd_and_console_on_a_cluster_not_deployed(tmp_path):
    cd = write_cluster(tmp_path / "nd", topology="single", masters__count=1, workers__count=0,
                       bastion__enabled=False)
    r = run("etcd", "health", cd.path)
    assert r.exit_code == 1 and "has no local network (deploy it first)" in r.output
    r = run("console", cd.path, "nd-master-0", "--no-follow")
    assert r.exit_code == 1 and "no node 'nd-master-0' in cluster nd (nodes: none)" in r.output
    r = run("nodes", cd.path, "-o", "json")
    assert r.exit_code == 0 and json.loads(r.stdout) == []


@pytest.mark.parametrize("args,code,said", [
    (["--max-surge", "0", "--max-unavailable", "0"], 4, "cannot both be 0"),
    (["--max-surge", "-1"], 2, "Invalid value for '--max-surge'"),
])
def test_upgrade_refuses_what_cannot_roll(tmp_path, args, code, said):
    cd = write_cluster(tmp_path / "up", topology="single", masters__count=1, workers__count=0,
                       bastion__enabled=False)
    r = run("upgrade", cd.path, *args)
    assert r.exit_code == code and said in r.output


def test_image_upload_of_a_file_that_is_not_a_manifest(tmp_path, monkeypatch):
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(tmp_path / "clouds.yaml"))
    (tmp_path / "clouds.yaml").write_text("clouds: {}\n")
    bogus = tmp_path / "x.manifest.json"
    bogus.write_text("{}")
    r = run("image", "upload", bogus, "--cloud", "nowhere")
    assert r.exit_code == 1 and "cloud 'nowhere'" in r.output


def test_image_show_reads_the_manifest(tmp_path):
    from k8simg.model.manifest import (
        DEBIAN_ETCD_SOURCE,
        DEBIAN_ETCD_SUPPORT,
        NO_KUBERNETES,
        Manifest,
    )

    base = dict(k8simg_version="0.1.0", kubernetes_version="1.35.2", built_at="2026-11-29T10:00:00+00:00",
                image_file="k8simg-1.35.2.qcow2", image_sha256="ab" * 32, image_bytes=3)
    without = Manifest(**base, etcd={"version": "3.4.23-4+b5", "source": DEBIAN_ETCD_SOURCE,
                                     "support": DEBIAN_ETCD_SUPPORT})
    (tmp_path / "k8simg-1.35.2.qcow2").write_bytes(b"img")
    (tmp_path / "k8simg-1.35.2.manifest.json").write_text(without.to_json())
    assert json.loads(without.to_json())["kubernetes_binaries"] == NO_KUBERNETES
    r = run("image", "show", tmp_path / "k8simg-1.35.2.qcow2")
    assert r.exit_code == 0 and "kubernetes: ABSENT" in r.output
    assert f"etcd: 3.4.23-4+b5 from debian ({DEBIAN_ETCD_SUPPORT})" in r.output
    binaries = {n: {"version": "1.35.2", "sha256": "00" * 32, "source": "x"}
                for n in ("kubelet", "kubectl", "kubeadm")}
    (tmp_path / "k8simg-1.35.2.manifest.json").write_text(
        Manifest(**base, kubernetes_binaries=binaries).to_json())
    r = run("image", "show", tmp_path / "k8simg-1.35.2.manifest.json", "-o", "json")
    out = json.loads(r.stdout)
    assert out["has_kubernetes"] is True and out["binaries"] == ["kubeadm", "kubectl", "kubelet"]
    assert out["etcd"] == {}  # a manifest from before k8simg said which etcd
    (tmp_path / "k8simg-1.35.2.manifest.json").write_text('{"image": {}}')
    r = run("image", "show", tmp_path / "k8simg-1.35.2.qcow2")
    assert r.exit_code == 1 and "k8simg-1.35.2.manifest.json: not a k8simg bake manifest" in r.output


def test_config_show_prints_the_effective_configuration_with_the_uid(tmp_path):
    assert run("init", tmp_path / "a", "--workers", "1").exit_code == 0
    assert run("init", tmp_path / "b", "--workers", "1").exit_code == 0
    r = run("config", "show", tmp_path / "a", "-o", "json")
    assert r.exit_code == 0, r.output
    shown = json.loads(r.stdout)
    state = json.loads((tmp_path / "a" / "state.json").read_text())
    assert shown["uid"] == state["uid"] and len(shown["uid"]) == 16
    assert shown["name"] == "a" and shown["workers"]["count"] == 1
    assert shown["openstack"]["credential_roles"] == ["member"]  # defaults filled in
    assert shown["network"]["node_cidr"] == "10.0.0.0/24"
    # two clusters, two identities, whatever their names
    other = json.loads(run("config", "show", tmp_path / "b", "-o", "json").stdout)
    assert other["uid"] != shown["uid"]
    # a cluster made before UIDs shows none until its next deploy gives it one
    (tmp_path / "a" / "state.json").unlink()
    assert json.loads(run("config", "show", tmp_path / "a", "-o", "json").stdout)["uid"] is None
    text = run("config", "show", tmp_path / "b").stdout
    assert text.startswith(f"uid: {other['uid']}\nname: b\n")


def test_config_set_keeps_comments_and_refuses_what_does_not_validate(tmp_path):
    assert run("init", tmp_path / "c").exit_code == 0
    path = tmp_path / "c" / "cluster.yaml"
    before = path.read_text()
    r = run("config", "set", tmp_path / "c", "workers.count", "4", "-o", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"cluster": "c", "path": "workers.count", "value": 4}
    r = run("config", "set", tmp_path / "c", "api.extra_sans", "[api.example.com, 203.0.113.7]")
    assert r.exit_code == 0, r.output
    after = path.read_text()
    # exactly those lines changed; every comment and the rest of the layout kept
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=False)
               if a != b]
    assert changed[0] == ("  count: 2", "  count: 4")
    assert changed[1][0].startswith("  extra_sans: []") and "# more names" in changed[1][1]
    assert [ln for ln in before.splitlines() if ln.lstrip().startswith("#")] == \
        [ln for ln in after.splitlines() if ln.lstrip().startswith("#")]
    assert json.loads(run("config", "show", tmp_path / "c", "-o", "json").stdout)["api"][
        "extra_sans"] == ["api.example.com", "203.0.113.7"]
    assert path.stat().st_mode & 0o777 == 0o600

    unchanged = path.read_bytes()
    for args, words in [
        (["masters.count", "4"], "HA needs an odd number >= 3, got 4"),
        (["masters.colour", "red"], "unknown key"),
        (["name.first", "x"], "name: is not a mapping or a list"),
        (["workers.count", "[1"], "workers.count: the value '[1' is not YAML"),
        (["bastion.allowed_cidrs.7", "10.0.0.0/8"],
         "bastion.allowed_cidrs.7: '7' is not an index of the list (it has 1 items)"),
        (["api.port", "2379"], "2379 is etcd's client port"),
        (["..", "1"], "give a dotted path such as workers.count"),
    ]:
        r = run("config", "set", tmp_path / "c", *args)
        assert r.exit_code == 2 and words in r.output, (args, r.output)
        assert args[0].split(".")[0] in r.output  # the path (or where it stops) is named
        assert path.read_bytes() == unchanged, args


def test_deploy_shows_each_change_once_on_a_terminal_and_lists_them_on_a_pipe(tmp_path):
    # Progress (stderr) says each change as it is made; the result (stdout) lists them again
    # for a script. On a terminal that holds both, the list is not printed a second time.
    image = tmp_path / "empty.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    cd = write_cluster(tmp_path / "once", image=str(image), topology="single",
                       masters__count=1, workers__count=0, bastion__enabled=False)
    exe = str(Path(sys.executable).with_name("k8simg"))
    seen = []

    def read(fd):
        data = os.read(fd, 4096)
        seen.append(data)
        return data
    status = pty.spawn([exe, "deploy", str(cd.path), "--plan"], read)
    terminal = b"".join(seen).decode()
    assert os.waitstatus_to_exitcode(status) == 0, terminal
    assert terminal.count("server                 once-master-0") == 1, terminal
    assert "planned 5 change(s)" in terminal

    piped = subprocess.run([exe, "deploy", str(cd.path), "--plan"], capture_output=True,
                           text=True, check=True)
    assert piped.stdout.count("server                 once-master-0") == 1, piped.stdout
    assert piped.stderr.count("server                 once-master-0") == 1, piped.stderr
