"""The first-boot machinery every k8simg image carries, the same for every cluster.

A node's Ignition config holds only what is particular to its cluster and to itself (names,
addresses, keys, cluster values) and enables units that the image already has. That split is
what keeps a master's config within Nova's user_data limit even with RSA keys: generic unit
files, runtime settings and the cluster-independent add-on manifests are baked once per
release (``k8simg bake`` writes :func:`image_files` into the image) instead of travelling with
every node.
"""

from k8simg.ignition.jinja import template
from k8simg.model.images import IMAGES_DIR, LIST_FILE
from k8simg.model.versions import RELEASES, images

PKI = "/etc/kubernetes/pki"
ENV_DIR = "/etc/k8simg"
ETCD_ENV = f"{ENV_DIR}/etcd.env"
KUBELET_ENV = f"{ENV_DIR}/kubelet.env"
ADDONS_ENV = f"{ENV_DIR}/addons.env"
ADDONS_DIR = "/usr/share/k8simg/addons"
IMAGE_IMPORTER = "/usr/libexec/k8simg/import-images"
ADDONS_APPLIER = "/usr/libexec/k8simg/apply-addons"
ETCD_RESTORE = "/usr/libexec/k8simg/etcd-restore"
ETCD_JOIN = "/usr/libexec/k8simg/etcd-join"
ETCD_JOIN_ENV = "/run/k8simg/etcd-join.env"  # a joining member's list, as the cluster has it
ETCD_RESTORE_ENV = "/etc/k8simg/etcd-restore.env"  # the snapshot's key: a restoring member's
CNI_BIN_DIR = "/usr/lib/cni"  # where Debian's containernetworking-plugins installs them
STORAGE_LABEL = "k8s-storage"  # the attached volume, formatted by Ignition on first boot
STORAGE_ROOT = "/var/lib/k8simg"
STORAGE_BY_LABEL = f"/dev/disk/by-label/{STORAGE_LABEL}"  # what the volume's mount unit mounts
RESTORE_DIR = f"{STORAGE_ROOT}/restore"  # on the volume: a snapshot can be large
RESTORE_SOURCE = f"{RESTORE_DIR}/etcd.db.enc"  # fetched by Ignition for a restoring member
DEVICE_WAITS = (STORAGE_BY_LABEL, "/dev/ttyS0")
DEVICE_TIMEOUT = "10min"
WORKER_LABEL = ("k8simg.io/role", "worker")
KUBECONFIGS = {"controller_manager": "/etc/kubernetes/controller-manager.conf",
               "scheduler": "/etc/kubernetes/scheduler.conf",
               "super_admin": "/etc/kubernetes/super-admin.conf",
               "kubelet": "/etc/kubernetes/kubelet.conf"}

# Bind mounts of the storage volume, by the path they provide.
STORAGE_BINDS = {"/var/lib/containerd": "containerd", "/var/lib/docker": "docker",
                 "/var/lib/etcd": "etcd"}
ADDON_SETS = {"core": ["00-rbac", "10-kube-proxy", "20-coredns", "30-flannel",
                       "40-ingress-nginx"],
              "openstack": ["50-openstack-cloud-controller-manager", "60-cinder-csi"]}


def path_unit_name(path: str, suffix: str) -> str:
    """``systemd-escape --path --suffix=SUFFIX`` for the plain paths used here."""
    return path.strip("/").replace("-", "\\x2d").replace("/", "-") + "." + suffix


def mount_unit_name(path: str) -> str:
    return path_unit_name(path, "mount")


def addon_manifests(kubernetes_version: str) -> dict[str, str]:
    """``<set>/<name>.yaml`` -> the cluster-independent add-on manifests of a release."""
    ctx = {"images": images(RELEASES[kubernetes_version]), "cni_bin_dir": CNI_BIN_DIR,
           "worker_label_key": WORKER_LABEL[0], "worker_label_value": WORKER_LABEL[1]}
    return {f"{s}/{n}.yaml": template(f"image/addons/{s}/{n}.yaml.j2", **ctx)
            for s, names in ADDON_SETS.items() for n in names}


def etcd_line(version: str) -> tuple[int, int]:
    """``3.6.6`` -> ``(3, 6)``: what decides the names etcd's flags go by."""
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def image_files(kubernetes_version: str, etcd_version: str | None = None
                ) -> dict[str, tuple[int, str]]:
    """Every file the image carries for node configs to rely on: path -> (mode, text).

    Units are installed, never enabled: a node's config enables what its role runs.

    :param etcd_version: the etcd the image carries (default: the one kubeadm pins for the
        release); etcd's unit names its flags as that line does (3.6 turned the experimental
        flags kubeadm sets into a feature gate and a plain flag, and 3.7 drops the old names).
    """
    rel = RELEASES[kubernetes_version]
    ctx = {"etcd_line": etcd_line(etcd_version or rel.etcd), "pki": PKI, "etcd_env": ETCD_ENV,
           "kubelet_env": KUBELET_ENV,
           "addons_env": ADDONS_ENV, "kubeconfigs": KUBECONFIGS, "images": images(rel),
           "cni_bin_dir": CNI_BIN_DIR, "images_dir": IMAGES_DIR, "list_file": LIST_FILE,
           "importer": IMAGE_IMPORTER, "addons_applier": ADDONS_APPLIER,
           "restore_script": ETCD_RESTORE, "join_script": ETCD_JOIN, "join_env": ETCD_JOIN_ENV,
           "restore_env": ETCD_RESTORE_ENV, "restore_source": RESTORE_SOURCE,
           "restore_dir": RESTORE_DIR,
           # etcd's snapshot files are etcdutl's from 3.5 on; the 3.4 line has only etcdctl
           "snapshot_tool": "etcdutl" if etcd_line(etcd_version or rel.etcd) >= (3, 5)
           else "ETCDCTL_API=3 etcdctl"}
    unit_dir = "/etc/systemd/system"
    files = {
        f"{unit_dir}/k8simg-etcd.service": (0o644, template("image/k8simg-etcd.service.j2", **ctx)),
        f"{unit_dir}/k8simg-etcd-restore.service":
            (0o644, template("image/k8simg-etcd-restore.service.j2", **ctx)),
        ETCD_RESTORE: (0o755, template("image/etcd-restore.sh.j2", **ctx)),
        ETCD_JOIN: (0o755, template("image/etcd-join.sh.j2", **ctx)),
        f"{unit_dir}/kubelet.service": (0o644, template("image/kubelet.service.j2")),
        f"{unit_dir}/kubelet.service.d/10-k8simg.conf":
            (0o644, template("image/kubelet-dropin.conf.j2", **ctx)),
        f"{unit_dir}/k8simg-addons.service": (0o644, template("image/k8simg-addons.service.j2",
                                                             **ctx)),
        f"{unit_dir}/k8simg-images.service": (0o644, template("image/k8simg-images.service.j2",
                                                             **ctx)),
        IMAGE_IMPORTER: (0o755, template("image/import-images.sh.j2", **ctx)),
        ADDONS_APPLIER: (0o755, template("image/apply-addons.sh.j2", **ctx)),
        "/etc/containerd/config.toml": (0o644, template("image/containerd-config.toml.j2", **ctx)),
        "/etc/sysctl.d/90-k8simg.conf": (0o644, template("image/sysctl.conf.j2")),
        "/etc/modules-load.d/k8simg.conf": (0o644, template("image/modules.conf.j2")),
    }
    # The runtimes never start on the root disk when the volume is missing.
    for svc, path in (("containerd", "/var/lib/containerd"), ("docker", "/var/lib/docker")):
        files[f"{unit_dir}/{svc}.service.d/10-k8simg-storage.conf"] = (
            0o644, f"[Unit]\nRequiresMountsFor={path}\n")
    # systemd gives up on a device after 90 s and fails everything that needs it, for good.
    # Both devices below exist at boot (the volume is attached before the server starts and
    # Ignition has already seen it); only udev's announcement can be late, on a starved node
    # (a loaded hypervisor, software emulation). Waiting longer costs nothing; giving up
    # leaves a node without its runtime, or without the console login that shows it is up.
    for device in DEVICE_WAITS:
        files[f"{unit_dir}/{path_unit_name(device, 'device')}.d/10-k8simg-timeout.conf"] = (
            0o644, f"[Unit]\nJobRunningTimeoutSec={DEVICE_TIMEOUT}\n")
    volume = mount_unit_name(STORAGE_ROOT)
    files[f"{unit_dir}/{volume}"] = (0o644, template(
        "image/storage.mount.j2", what=STORAGE_BY_LABEL, where=STORAGE_ROOT,
        type="ext4", options="", requires="",
        before="containerd.service docker.service k8simg-etcd.service"))
    for where, sub in STORAGE_BINDS.items():
        files[f"{unit_dir}/{mount_unit_name(where)}"] = (0o644, template(
            "image/storage.mount.j2", what=f"{STORAGE_ROOT}/{sub}", where=where, type="none",
            options="bind", requires=volume,
            before="containerd.service docker.service k8simg-etcd.service"))
    for name, text in addon_manifests(kubernetes_version).items():
        files[f"{ADDONS_DIR}/{name}"] = (0o644, text)
    return files


def image_units(kubernetes_version: str) -> set[str]:
    """Names of the units the image provides (for checking what node configs enable)."""
    return {p.rsplit("/", 1)[1] for p in image_files(kubernetes_version)
            if p.startswith("/etc/systemd/system/") and p.count("/") == 4}
