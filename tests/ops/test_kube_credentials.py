"""How deploy and upgrade reach the Kubernetes API: with the cluster-admin identity's files in
the cluster's PKI, and no copy of its key anywhere else. (Loading admin.conf, whose credentials
are embedded, makes the Kubernetes client write the key to the temporary folder, where a killed
run leaves it.) Against a real TLS server on loopback that requires a client certificate of the
cluster's CA, as kube-apiserver does."""

import tempfile

import pytest

from k8simg.ops.drain import api_access
from k8simg.pki import certs as table
from k8simg.pki import cluster_pki
from tests.conftest import edit_cluster, write_cluster
from tests.pki.test_tls import tls_server


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """The temporary folder every tempfile call in this process uses, empty."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def test_the_api_is_asked_with_the_pki_files_and_no_key_is_copied(tmp_path, scratch):
    cd = write_cluster(tmp_path / "kc", cloud="k8simg-test", topology="single",
                       masters__count=1, workers__count=0, bastion__enabled=False)
    cd.state.set_addresses(api="127.0.0.1")  # the API's address goes into its certificate
    pki = cluster_pki(cd)
    pki.ensure()
    pki.write_kubeconfigs(cd.kubeconfig_dir)
    inst = next(i for i in table.instances(pki.ctx) if i.id == "apiserver@kc-master-0")
    crt, key = pki.paths(inst)
    with tls_server(crt, key, client_ca=cd.pki_dir / "ca.crt") as (port, seen):
        edit_cluster(cd, api__port=port)
        cluster_pki(cd).write_kubeconfigs(cd.kubeconfig_dir)  # admin.conf as deploy leaves it
        access = api_access(cd, cd.load(), has_kubernetes=True)
        assert access.api is not None, access.why_not
        assert seen == [{"organizationName": "kubeadm:cluster-admins",
                         "commonName": "kubernetes-admin"}]
    assert list(scratch.iterdir()) == []  # no copy of the cluster-admin key


def test_an_api_that_does_not_answer_is_said_and_nothing_is_copied(tmp_path, scratch):
    cd = write_cluster(tmp_path / "kc", cloud="k8simg-test", topology="single",
                       masters__count=1, workers__count=0, bastion__enabled=False)
    cd.state.set_addresses(api="127.0.0.1")
    cluster_pki(cd).ensure()
    with tls_server(*cluster_pki(cd).paths(next(
            i for i in table.instances(cluster_pki(cd).ctx) if i.spec.name == "apiserver"))) \
            as (port, _seen):
        pass  # its port is free again: nothing listens there
    edit_cluster(cd, api__port=port)
    access = api_access(cd, cd.load(), has_kubernetes=True)
    assert access.api is None and access.why_not.startswith("the API does not answer")
    assert list(scratch.iterdir()) == []
