"""The one table of pinned Kubernetes releases k8simg knows how to build.

Every version a cluster definition may name is a key here; bake, render and the add-ons read
their component versions from the matching entry and nowhere else.
"""

from dataclasses import dataclass

from k8simg.model.images import ImageSpec


@dataclass(frozen=True)
class Release:
    """Component versions that are built, tested and shipped together."""

    kubernetes: str  # kubelet, kubectl, kubeadm and the control-plane images
    pause: str  # sandbox image, as kubeadm pins it for this release
    coredns: str
    etcd: str  # the etcd kubeadm pins for the release, baked from its etcd image
    flannel: str
    cni_plugins: str
    ingress_nginx: str
    cloud_provider_openstack: str  # openstack-cloud-controller-manager and cinder-csi-plugin


RELEASES: dict[str, Release] = {
    "1.35.2": Release(
        kubernetes="1.35.2",
        pause="3.10.1",
        coredns="1.12.4",
        etcd="3.6.6",
        flannel="0.27.4",
        cni_plugins="1.6.2",
        ingress_nginx="1.13.3",
        cloud_provider_openstack="1.34.1",
    ),
    "1.34.5": Release(
        kubernetes="1.34.5",
        pause="3.10.1",
        coredns="1.12.1",
        etcd="3.6.5",
        flannel="0.27.4",
        cni_plugins="1.6.2",
        ingress_nginx="1.13.3",
        cloud_provider_openstack="1.34.1",
    ),
}

DEFAULT_KUBERNETES_VERSION = "1.35.2"

# The etcd of an image baked without Kubernetes (the offline image: demos and infrastructure
# tests): Debian bookworm's etcd-server, a line upstream no longer maintains and Kubernetes no
# longer tests against. An image with Kubernetes carries the etcd kubeadm pins instead
# (Release.etcd, out of the release's etcd image: see etcd_image).
DEBIAN_ETCD = "3.4.23"

# The SHA-512 of each supported release's tarballs, as upstream's CHANGELOG publishes them
# (kubernetes/kubernetes CHANGELOG/CHANGELOG-1.35.md and CHANGELOG-1.34.md at commit
# 008b3652959ca58af8be3fb5b6ecfe9ae7638282, "Server Binaries" and "Node Binaries"). The bake
# trusts a tarball only when it matches (k8simg.ops.artifacts); kubelet, kubeadm, kubectl and
# the control-plane images come out of these two files.
TARBALL_SHA512: dict[str, dict[str, str]] = {
    "1.35.2": {
        "kubernetes-node-linux-amd64.tar.gz":
            "499a61b38dbcddb7105a89cac0f63e1d9a08178c051d693a8095de65939deb4e"
            "12ff4a11116d69ec69e14da0d929c8344bbb8ea8ad06cc65d749d327ee0c7c55",
        "kubernetes-server-linux-amd64.tar.gz":
            "73b7e15267995f488159628f27b1742199de97a673e0728bf9c539a06d9454d3"
            "e9725516bf5d6c05cea7d4c8b847fe44fe835d39e0d7eeedc453833918022296",
    },
    "1.34.5": {
        "kubernetes-node-linux-amd64.tar.gz":
            "11baab6d40a273b32d5d07c143cdcc41929e3173fe6ec76d68857c1339f1122b"
            "4f57d314ea95af09af8591438fd200e915d5978fc297bd7e176b6e0ccc9017e5",
        "kubernetes-server-linux-amd64.tar.gz":
            "c7970e1e061a1c07acfa23d9166aeae583d27cbe2fdf14f0d7c17d2425a7292a"
            "7347775413258635ca458c5fd84e8f48e63ff6e12fb37489d9cf2106e8c721a2",
    },
}

# Sidecars and helpers that move independently of the Kubernetes release.
_CSI_ATTACHER = "v4.8.1"
_CSI_PROVISIONER = "v5.2.0"
_CSI_RESIZER = "v1.13.2"
_CSI_NODE_DRIVER_REGISTRAR = "v2.13.0"
_FLANNEL_CNI_PLUGIN = "v1.7.1-flannel1"


def images(release: Release) -> dict[str, str]:
    """Every container image a node of ``release`` runs, by role in the cluster.

    The bake pulls exactly these (and verifies their digests); the rendered manifests name
    exactly these, so a node never pulls anything at run time.
    """
    k8s, cpo, sig = f"v{release.kubernetes}", f"v{release.cloud_provider_openstack}", \
        "registry.k8s.io/sig-storage"
    return {
        "apiserver": f"registry.k8s.io/kube-apiserver:{k8s}",
        "controller_manager": f"registry.k8s.io/kube-controller-manager:{k8s}",
        "scheduler": f"registry.k8s.io/kube-scheduler:{k8s}",
        "kube_proxy": f"registry.k8s.io/kube-proxy:{k8s}",
        "pause": f"registry.k8s.io/pause:{release.pause}",
        "coredns": f"registry.k8s.io/coredns/coredns:v{release.coredns}",
        "flannel": f"ghcr.io/flannel-io/flannel:v{release.flannel}",
        "flannel_cni_plugin": f"ghcr.io/flannel-io/flannel-cni-plugin:{_FLANNEL_CNI_PLUGIN}",
        "ingress_nginx": f"registry.k8s.io/ingress-nginx/controller:v{release.ingress_nginx}",
        "openstack_ccm": f"registry.k8s.io/provider-os/openstack-cloud-controller-manager:{cpo}",
        "cinder_csi": f"registry.k8s.io/provider-os/cinder-csi-plugin:{cpo}",
        "csi_attacher": f"{sig}/csi-attacher:{_CSI_ATTACHER}",
        "csi_provisioner": f"{sig}/csi-provisioner:{_CSI_PROVISIONER}",
        "csi_resizer": f"{sig}/csi-resizer:{_CSI_RESIZER}",
        "csi_node_driver_registrar": f"{sig}/csi-node-driver-registrar:{_CSI_NODE_DRIVER_REGISTRAR}",
    }


# Digests (of the linux/amd64 image manifest) pinned by k8simg, by image reference. An image
# listed here is pulled by this digest and nothing else; one that is not is resolved from its
# tag when the image is baked, pulled by the digest found, and recorded as resolved in the
# bake's manifest. Entries are added only once checked against the upstream registry: the
# machine k8simg is developed on cannot reach one, and a digest nobody verified is worse than
# none.
PINNED_DIGESTS: dict[str, str] = {}

# Digests of multi-platform indexes, where the image's project publishes one for the tag
# (its own release manifests pin the index): the bake fetches the index by this digest and
# takes the linux/amd64 digest it names.
PINNED_INDEX_DIGESTS: dict[str, str] = {
    # kubernetes/ingress-nginx changelog/controller-1.13.3.md ("Images:"), commit 19df4d1e8a15
    "registry.k8s.io/ingress-nginx/controller:v1.13.3":
        "sha256:1b044f6dcac3afbb59e05d98463f1dec6f3d3fb99940bc12ca5d80270358e3bd",
}


def etcd_image(release: Release, index_pins: dict[str, str] | None = None) -> ImageSpec:
    """The image the bake takes etcd, etcdctl and etcdutl from: the one kubeadm runs etcd from
    for ``release`` (kubeadm's ``SupportedEtcdVersion``; tests/conformance/data/
    k8s-<release>-kubeadm.json says where that was read). Nodes run etcd as a systemd unit, so
    the image itself is not carried into the node image, only those three binaries."""
    ref = f"registry.k8s.io/etcd:{release.etcd}-0"
    index_pins = PINNED_INDEX_DIGESTS if index_pins is None else index_pins
    return ImageSpec("etcd", ref, PINNED_DIGESTS.get(ref), index_pins.get(ref))


def etcd_version_of(ref: str) -> str:
    """The etcd version an etcd image's tag names (``registry.k8s.io/etcd:3.6.6-0`` ->
    ``3.6.6``)."""
    return ref.rsplit(":", 1)[1].split("-", 1)[0]


def image_specs(release: Release, index_pins: dict[str, str] | None = None):
    """The images of :func:`images` as the bake pulls them (with pinned digests).

    :param index_pins: instead of :data:`PINNED_INDEX_DIGESTS` (a bake of stand-ins).
    """
    index_pins = PINNED_INDEX_DIGESTS if index_pins is None else index_pins
    return [ImageSpec(key, ref, PINNED_DIGESTS.get(ref), index_pins.get(ref))
            for key, ref in images(release).items()]
