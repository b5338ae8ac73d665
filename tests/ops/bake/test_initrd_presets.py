"""The initramfs applies Ignition's unit presets itself (k8simg-ignition-presets): run here
with the machine's real systemctl and systemd-machine-id-setup against a scratch root laid
out as the image's, with the preset file Ignition writes."""

import os
import re
import shutil
import subprocess

import pytest

from k8simg.ops.bake import ELEMENTS_DIR

SCRIPT = (ELEMENTS_DIR / "k8simg-ignition/static/usr/lib/dracut/modules.d/31k8simg"
          / "k8simg-ignition-presets")

pytestmark = pytest.mark.skipif(not (shutil.which("systemctl")
                                     and shutil.which("systemd-machine-id-setup")),
                                reason="systemd's tools are not installed")


def unit(root, name, install):
    path = root / "usr/lib/systemd/system" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"[Unit]\nDescription={name}\n\n[Service]\nExecStart=/bin/true\n\n"
                    f"[Install]\n{install}\n")


def scratch_root(tmp_path, preset: str | None):
    root = tmp_path / "sysroot"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/machine-id").write_text("uninitialized\n")  # the image's (DIB's sysprep)
    unit(root, "k8simg-etcd.service", "WantedBy=multi-user.target")
    unit(root, "containerd.service", "WantedBy=multi-user.target")
    unit(root, "docker.service", "WantedBy=multi-user.target")
    unit(root, "serial-getty@.service", "WantedBy=getty.target")
    # a unit the image enabled at bake, which Ignition's config does not name
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "docker.service").symlink_to("/usr/lib/systemd/system/docker.service")
    if preset is not None:
        d = root / "etc/systemd/system-preset"
        d.mkdir(parents=True)
        (d / "20-ignition.preset").write_text(preset)
    return root


INITRD_ID = "0123456789abcdef0123456789abcdef"


def run(root, initrd_id: str | None = INITRD_ID):
    """The script, with ``initrd_id`` as the initramfs's own /etc/machine-id (None: none)."""
    own = root.parent / "initrd-machine-id"
    if initrd_id is not None:
        own.write_text(initrd_id + "\n")
    return subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "K8SIMG_SYSROOT": str(root),
                               "K8SIMG_INITRD_MACHINE_ID": str(own)})


def links(root):
    base = root / "etc/systemd/system"
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_symlink())


def test_ignitions_lines_enable_and_disable_what_they_name(tmp_path):
    root = scratch_root(tmp_path, "enable k8simg-etcd.service\nenable containerd.service\n"
                                  "disable docker.service\n"
                                  "enable serial-getty@.service ttyS1 ttyS2\n")
    r = run(root)
    assert r.returncode == 0, r.stderr
    assert links(root) == ["getty.target.wants/serial-getty@ttyS1.service",
                           "getty.target.wants/serial-getty@ttyS2.service",
                           "multi-user.target.wants/containerd.service",
                           "multi-user.target.wants/k8simg-etcd.service"]
    # the machine id is set, so the real root's systemd sees no first boot (and its preset):
    # the initramfs's own (from the VM's UUID on KVM), so both journals are the node's
    mid = root / "etc/machine-id"
    assert mid.read_text() == INITRD_ID + "\n"
    assert mid.stat().st_mode & 0o777 == 0o444
    assert not (root / "etc/machine-id.k8simg").exists()


def test_without_ignitions_presets_only_the_machine_id(tmp_path):
    root = scratch_root(tmp_path, None)
    r = run(root)
    assert r.returncode == 0, r.stderr
    assert links(root) == ["multi-user.target.wants/docker.service"]
    assert (root / "etc/machine-id").read_text() == INITRD_ID + "\n"


def test_without_an_initramfs_id_a_random_one(tmp_path):
    """The initramfs's id unset or not an id (``uninitialized``): systemd-machine-id-setup
    makes a random one, as systemd would."""
    for own in (None, "uninitialized"):
        root = scratch_root(tmp_path / str(own), "enable k8simg-etcd.service\n")
        r = run(root, own)
        assert r.returncode == 0, r.stderr
        got = (root / "etc/machine-id").read_text()
        assert re.fullmatch(r"[0-9a-f]{32}\n", got) and got != INITRD_ID + "\n", got


def test_a_unit_the_image_lacks_fails_the_first_boot(tmp_path):
    """Ignition's config names a unit the image does not have: the service fails (and with
    it ignition-complete.target: the initramfs's report on the console), never a node that
    boots with the unit silently off."""
    root = scratch_root(tmp_path, "enable kubelet.service\n")
    r = run(root)
    assert r.returncode != 0
    assert "kubelet.service" in r.stderr
    assert (root / "etc/machine-id").read_text() == "uninitialized\n"  # untouched
