"""The add-on applier every master runs (the image's script, the config's kubeconfig and
environment): it waits for its API server with a TCP connect of bash's own, never with
kubectl's apply, then applies once something answers there, retrying a failed apply."""

import os
import subprocess

from k8simg.ignition.image import ADDONS_APPLIER, ADDONS_ENV, KUBECONFIGS
from k8simg.ignition.render import render_node
from tests.ignition.support import env_values, node_view
from tests.support import free_ports, processes, wait_until


def applier_setup(rendered_cluster, tmp_path):
    """The applier, the node's own kubeconfig with its server moved to a free port on this
    machine's loopback, and stand-ins on PATH: kubectl (says how it was run; fails its first
    run) and sleep (says how long it was asked for, then sleeps 0.05 s)."""
    _, ctx = rendered_cluster("single")
    master = ctx.nodes[0]
    doc = render_node(ctx, master)
    view = node_view(doc, ctx.config.kubernetes_version)
    mode, script = view[ADDONS_APPLIER]
    applier = tmp_path / "apply-addons"
    applier.write_bytes(script)
    applier.chmod(mode)
    (port,) = free_ports(1)
    own = f"https://{master.address}:{ctx.config.api.port}"
    text = view[KUBECONFIGS["super_admin"]][1].decode()
    assert f"server: {own}\n" in text
    kubeconfig = tmp_path / "super-admin.conf"
    kubeconfig.write_text(text.replace(own, f"https://127.0.0.1:{port}"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    for name, body in (("kubectl", f'echo "kubectl $*" >> {log}\n'
                                   f'[ -e {tmp_path}/failed-once ] && exit 0\n'
                                   f'touch {tmp_path}/failed-once; exit 1\n'),
                       ("sleep", f'echo "sleep $*" >> {log}\nexec /bin/sleep 0.05\n')):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}")
        (bin_dir / name).chmod(0o755)
    addons = env_values(doc, ADDONS_ENV)["ADDONS"]
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "ADDONS": addons,
           "K8SIMG_ADDONS_KUBECONFIG": str(kubeconfig), "K8SIMG_KUBECTL": str(bin_dir / "kubectl")}
    return applier, env, port, log, kubeconfig, addons


def calls(log) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_kubectl_waits_for_an_answering_api_then_applies(rendered_cluster, tmp_path):
    applier, env, port, log, kubeconfig, addons = applier_setup(rendered_cluster, tmp_path)
    with processes(kill=True) as start:
        run = start([applier], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    text=True)
        # Nothing answers: the applier waits, 5 s at a time, and runs no kubectl.
        wait_until(lambda: calls(log).count("sleep 5") >= 3, 30, "three waits")
        assert run.poll() is None
        assert set(calls(log)) == {"sleep 5"}, calls(log)
        # Something listens there (a TLS server, as an API server would): kubectl's apply,
        # retried 10 s later when it fails, and done once it succeeds.
        make_cert(tmp_path)
        start(["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert",
               tmp_path / "api.crt", "-key", tmp_path / "api.key", "-www", "-quiet"],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: run.poll() is not None, 30, "the applier to finish")
        out = run.stdout.read()
        assert run.returncode == 0, out
    apply = (f"kubectl --kubeconfig={kubeconfig} apply --server-side --force-conflicts "
             f"--field-manager=k8simg {addons}")
    made = calls(log)
    assert made[made.index(apply):] == [apply, "sleep 10", apply], made
    assert f"apply-addons: waiting for the API server at 127.0.0.1:{port}" in out


def make_cert(tmp_path) -> None:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-keyout", tmp_path / "api.key", "-out", tmp_path / "api.crt"],
                   check=True, capture_output=True)


def test_a_kubeconfig_without_its_server_or_no_addons_fail_loudly(rendered_cluster, tmp_path):
    """Not a silent wait for ever: the applier fails, naming the file or the variable."""
    applier, env, _, log, kubeconfig, _ = applier_setup(rendered_cluster, tmp_path)
    kubeconfig.write_text("apiVersion: v1\nclusters: []\n")
    r = subprocess.run([applier], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert f"no https://<IPv4 address>:<port> server in {kubeconfig} (got '')" in r.stderr
    r = subprocess.run([applier], env={**env, "ADDONS": ""}, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1
    assert "ADDONS is not set in /etc/k8simg/addons.env" in r.stderr
    assert calls(log) == []
