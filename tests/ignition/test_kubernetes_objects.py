"""Every Kubernetes object a node config carries, against the official schemas, strictly."""

import kubernetes_validate
import pytest

from k8simg.ignition.render import render_node
from k8simg.model.versions import RELEASES
from tests.ignition.support import kube_objects


def schema_version(kubernetes: str) -> str:
    major, minor, _ = kubernetes.split(".")
    return f"{major}.{minor}.0"


@pytest.mark.parametrize("version", sorted(RELEASES))
def test_static_pods_and_addons_validate_strictly(rendered_cluster, version):
    _, ctx = rendered_cluster("ha3", cloud="openstack", kubernetes_version=version)
    objects = kube_objects(render_node(ctx, ctx.nodes[0]), version)
    kinds = {o["kind"] for _, o in objects}
    assert {"Pod", "DaemonSet", "Deployment", "ConfigMap", "Service", "ClusterRole",
            "ClusterRoleBinding", "Secret", "CSIDriver", "StorageClass", "IngressClass",
            "Namespace", "ServiceAccount", "Role", "RoleBinding"} <= kinds
    failures = []
    for path, obj in objects:
        try:
            kubernetes_validate.validate(obj, schema_version(version), strict=True)
        except kubernetes_validate.ValidationError as e:
            failures.append(f"{path} {obj['kind']}/{obj['metadata']['name']}: {e.message}")
    assert failures == []
    assert len(objects) > 40


def test_strict_validation_catches_unknown_fields():
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
           "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolicee": "Never"}]}}
    with pytest.raises(kubernetes_validate.ValidationError, match="imagePullPolicee"):
        kubernetes_validate.validate(pod, "1.35.0", strict=True)
