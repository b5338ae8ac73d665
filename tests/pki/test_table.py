import dataclasses

from k8simg.pki.certs import (
    BY_NAME,
    CLUSTER_ADMINS,
    MASTERS_GROUP,
    NODES_GROUP,
    TABLE,
    Scope,
    cas,
    table_problems,
)


def test_table_is_sound():
    assert table_problems() == []


def test_every_signer_exists_and_comes_first():
    seen = set()
    for spec in TABLE:
        if spec.ca:
            assert spec.ca in seen, spec.name
        seen.add(spec.name)


def test_invariant_checks_can_fail():
    broken = list(TABLE)
    broken[0], broken[3] = broken[3], broken[0]  # apiserver before its CA
    assert "apiserver: signer ca is unknown or comes later" in table_problems(tuple(broken))
    no_usage = dataclasses.replace(BY_NAME["front-proxy-client"], usages=())
    assert "front-proxy-client: no usages" in table_problems(TABLE + (no_usage,))
    assert "front-proxy-client: duplicate name" in table_problems(TABLE + (no_usage,))
    bad_signer = dataclasses.replace(BY_NAME["admin"], name="x", path="x", ca="admin")
    assert "x: signer admin is not a CA" in table_problems(TABLE + (bad_signer,))


def test_kubeadm_identities():
    """Subjects as current kubeadm issues them (certlist.go, phases/kubeconfig)."""
    ident = {s.name: (s.cn, s.orgs, s.usages) for s in TABLE}
    assert ident["apiserver"] == ("kube-apiserver", (), ("server",))
    assert ident["apiserver-kubelet-client"] == (
        "kube-apiserver-kubelet-client", (CLUSTER_ADMINS,), ("client",))
    assert ident["apiserver-etcd-client"] == ("kube-apiserver-etcd-client", (), ("client",))
    assert ident["etcd-healthcheck-client"] == ("kube-etcd-healthcheck-client", (), ("client",))
    assert ident["etcd-server"] == ("{node}", (), ("server", "client"))
    assert ident["etcd-peer"] == ("{node}", (), ("server", "client"))
    assert ident["front-proxy-client"] == ("front-proxy-client", (), ("client",))
    assert ident["admin"] == ("kubernetes-admin", ("kubeadm:cluster-admins",), ("client",))
    assert ident["super-admin"] == ("kubernetes-super-admin", (MASTERS_GROUP,), ("client",))
    assert ident["controller-manager"][0] == "system:kube-controller-manager"
    assert ident["scheduler"][0] == "system:kube-scheduler"
    assert ident["kubelet"] == ("system:node:{node}", (NODES_GROUP,), ("client",))
    assert [c.name for c in cas()] == ["ca", "front-proxy-ca", "etcd-ca"]
    assert {s.name for s in TABLE if s.scope is not Scope.CLUSTER} == {
        "apiserver", "etcd-server", "etcd-peer", "kubelet"}
