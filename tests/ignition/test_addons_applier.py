"""The add-on applier every master runs (the image's script, the config's kubeconfig and
environment): it waits for its API server with a TCP connect of bash's own, never with
kubectl's apply, then applies once the server answers."""

import os
import subprocess
import time

from k8simg.ignition.image import ADDONS_APPLIER, ADDONS_ENV, KUBECONFIGS
from k8simg.ignition.render import render_node
from tests.ignition.support import env_values, node_view
from tests.support import free_ports, processes, wait_until


def test_kubectl_waits_for_an_answering_api_then_applies_once(rendered_cluster, tmp_path):
    _, ctx = rendered_cluster("single")
    master = ctx.nodes[0]
    doc = render_node(ctx, master)
    view = node_view(doc, ctx.config.kubernetes_version)
    mode, script = view[ADDONS_APPLIER]
    applier = tmp_path / "apply-addons"
    applier.write_bytes(script)
    applier.chmod(mode)
    # The node's own kubeconfig, its server moved to this machine's loopback.
    (port,) = free_ports(1)
    own = f"https://{master.address}:{ctx.config.api.port}"
    text = view[KUBECONFIGS["super_admin"]][1].decode()
    assert f"server: {own}\n" in text
    kubeconfig = tmp_path / "super-admin.conf"
    kubeconfig.write_text(text.replace(own, f"https://127.0.0.1:{port}"))
    calls = tmp_path / "kubectl-calls"
    kubectl = tmp_path / "kubectl"  # stands in for kubectl: says how it was run
    kubectl.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    kubectl.chmod(0o755)
    addons = env_values(doc, ADDONS_ENV)["ADDONS"]
    env = {**os.environ, "ADDONS": addons, "K8SIMG_ADDONS_KUBECONFIG": str(kubeconfig),
           "K8SIMG_KUBECTL": str(kubectl)}
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-keyout", tmp_path / "api.key", "-out", tmp_path / "api.crt"],
                   check=True, capture_output=True)
    with processes(kill=True) as start:
        run = start([applier], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        # Nothing answers: more than one probe's period passes without kubectl.
        time.sleep(7)
        assert run.poll() is None, run.stdout.read()
        assert not calls.exists(), calls.read_text()
        # An API server (a TLS server answering HTTP) comes up: applied, once, and done.
        start(["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert",
               tmp_path / "api.crt", "-key", tmp_path / "api.key", "-www", "-quiet"],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: run.poll() is not None, 30, "the applier to finish")
        assert run.returncode == 0, run.stdout.read()
    assert calls.read_text() == (f"--kubeconfig={kubeconfig} apply --server-side "
                                 f"--force-conflicts --field-manager=k8simg {addons}\n")
