"""The one table of pinned Kubernetes releases k8simg knows how to build.

Every version a cluster definition may name is a key here; bake, render and the add-ons read
their component versions from the matching entry and nowhere else.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Release:
    """Component versions that are built, tested and shipped together."""

    kubernetes: str  # kubelet, kubectl, kubeadm and the control-plane images
    pause: str  # sandbox image, as kubeadm pins it for this release
    coredns: str
    etcd: str  # the etcd the image carries (Debian bookworm's etcd-server)
    flannel: str
    cni_plugins: str
    ingress_nginx: str
    cloud_provider_openstack: str  # openstack-cloud-controller-manager and cinder-csi-plugin


RELEASES: dict[str, Release] = {
    "1.35.2": Release(
        kubernetes="1.35.2",
        pause="3.10.1",
        coredns="1.12.4",
        etcd="3.4.23",
        flannel="0.27.4",
        cni_plugins="1.6.2",
        ingress_nginx="1.13.3",
        cloud_provider_openstack="1.34.1",
    ),
    "1.34.5": Release(
        kubernetes="1.34.5",
        pause="3.10.1",
        coredns="1.12.1",
        etcd="3.4.23",
        flannel="0.27.4",
        cni_plugins="1.6.2",
        ingress_nginx="1.13.3",
        cloud_provider_openstack="1.34.1",
    ),
}

DEFAULT_KUBERNETES_VERSION = "1.35.2"
