"""Boot the baked image under QEMU (software emulation) with a config drive holding a rendered
single-node config, and read the result from the serial console. Its one network device is
QEMU's user-mode network restricted to a single forward, to a file server on this machine's
loopback: the remote file the config names (as a restoring etcd member's does) is fetched by
Ignition at first boot."""

import hashlib
import json
import os
import re
import shlex
from http.server import SimpleHTTPRequestHandler

import pytest

from k8simg.clouds.local import vm as qemu
from k8simg.ignition.document import data_url, dumps
from k8simg.ignition.image import DEVICE_TIMEOUT, DEVICE_WAITS, path_unit_name
from k8simg.ignition.render import render_context, render_node
from k8simg.pki import cluster_pki
from tests.conftest import write_cluster
from tests.ops.bake.testimage import BUSYBOX
from tests.support import file_server

pytestmark = pytest.mark.slow


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

REPORT = r"""#!/bin/bash
# Test-only: report what first boot produced on the serial console, then power off. Written
# to a file first and to the console once the boot has finished: the serial getty hangs up
# ttyS0 when it starts (a vhangup), and a second boot, faster, started this report before
# it, so that every line after the hangup was lost (seen in CI: the report cut off, then the
# power-off).
exec > /run/k8simg-test-report 2>&1
echo "K8SIMG-REPORT-BEGIN"
echo "cmdline: $(cat /proc/cmdline)"
echo "firstboot-flag: $([ -e /boot/ignition.firstboot ] && echo present || echo absent)"
if [ -e /etc/k8simg/test-marker ]; then echo "marker: present"; rm -f /etc/k8simg/test-marker
else echo "marker: absent"; fi
for f in /etc/hostname /etc/kubernetes/pki/ca.crt /etc/kubernetes/pki/apiserver.key \
         /etc/kubernetes/pki/etcd/server.key /etc/k8simg/etcd.env \
         /etc/kubernetes/manifests/kube-apiserver.yaml /etc/kubernetes/super-admin.conf \
         /run/ignition.json; do
    echo "file: $f $(stat -c %a "$f" 2>/dev/null || echo missing)"
done
echo "hostname: $(hostname)"
echo "ssh: $(cd /etc/ssh && ls ssh_host_*_key | tr '\n' ' ')$(systemctl is-active ssh.service)"
echo "machine-id: $(cat /etc/machine-id)"
# PID 1's early lines reach the journal through kmsg, without _PID: by identifier. Its
# "Hostname set to" (initramfs and real root) says the query sees them at all.
sd=$(journalctl -b -o cat SYSLOG_IDENTIFIER=systemd)
echo "first-boot: detected $(grep -c '^Detected first boot' <<< "$sd")" \
     "preset $(grep -c '^Populated /etc with preset' <<< "$sd")" \
     "hostname $(grep -c '^Hostname set to' <<< "$sd")" \
     "ignition $(journalctl -b -o cat -t ignition | grep -c .)"
# systemd-sysusers: what it created (masked in the initramfs; the real root's /etc is stamped
# up to date with /usr at bake) and whether the real root's ran (its condition's result)
echo "sysusers: created $(journalctl -b -o cat -t systemd-sysusers | grep -c '^Creating')" \
     "ran $(systemctl show -p ConditionResult --value systemd-sysusers.service)" \
     "checked $([ "$(systemctl show -p ConditionTimestampMonotonic --value systemd-sysusers.service)" \
                 -gt 0 ] && echo yes || echo no)"
for u in systemd-resolved.service apparmor.service; do
    before=$(systemctl show -p Before --value $u | tr ' ' '\n' | grep -c '^sysinit.target$')
    echo "early: $u $(systemctl is-active $u) before-sysinit $before"
done
echo "chronyd: $(cat /proc/$(pgrep -x -o chronyd)/attr/current 2>&1)"
for u in containerd.service k8simg-etcd.service kubelet.service var-lib-containerd.mount \
         k8simg-addons.service docker.service etcd.service k8simg-images.service; do
    echo "unit: $u $(systemctl is-enabled "$u" 2>/dev/null) $(systemctl is-active "$u")"
done
for d in $DEVICES; do
    echo "wait: $d $(systemctl show -p JobRunningTimeoutUSec --value "$d")"
done
echo "mount: $(findmnt -n -o SOURCE,FSTYPE /var/lib/k8simg)"
while read -r _archive ref _digest; do
    got=$(ctr -n k8s.io images list "name==$ref" | awk 'NR == 2 { print $3 }')
    echo "image: $ref ${got:-missing}"
done < /usr/share/k8simg/images/images.list
out=$(timeout 300 ctr -n k8s.io run --rm $BUSYBOX k8simg-test /bin/busybox echo container-ran 2>&1)
echo "container: $(echo $out | tail -c 300)"
pki=/etc/kubernetes/pki
for i in $(seq 1 60); do
    out=$($ETCD_HEALTH 2>&1) && break
    sleep 2
done
echo "etcd: $out"
echo "remote: $(sha512sum $REMOTE 2>&1 | cut -d' ' -f1) $(stat -c %a $REMOTE 2>&1)"
echo "K8SIMG-REPORT-END"
exec systemd-run --no-block --unit k8simg-test-report-out /bin/bash -c '
    timeout 300 systemctl is-system-running --wait >/dev/null  # a stuck job: report anyway
    for i in $(seq 50); do pgrep -x agetty >/dev/null && break; sleep 0.2; done
    sleep 1
    cat /run/k8simg-test-report > /dev/ttyS0  # opened after the serial getty took the tty
    systemctl poweroff'
"""


# etcd's health over TLS as the API server's client asks it (``$pki`` set, ``$ETCD_IP``
# replaced): the report's check and the boot benchmark's probe
ETCD_HEALTH = ('ETCDCTL_API=3 etcdctl --endpoints="https://$ETCD_IP:2379" '
               '--cacert=$pki/etcd/ca.crt --cert=$pki/apiserver-etcd-client.crt '
               '--key=$pki/apiserver-etcd-client.key endpoint health')
REMOTE_PATH = "/var/lib/k8simg/restore/fetched-by-ignition"  # on the volume, as a snapshot's
GUEST_FILES = "10.0.2.100:8080"  # QEMU's user network forwards it to the test's file server


def add_test_units(doc: dict, etcd_ip: str, remote: tuple[str, str] | None = None) -> dict:
    """The rendered config plus a marker file and the report unit (test-only), and with
    ``remote`` ``(URL, SHA-512)`` a file Ignition fetches."""
    files = doc["storage"]["files"]
    if remote:
        files.append({"path": REMOTE_PATH, "mode": 0o600, "contents": {
            "source": remote[0], "verification": {"hash": f"sha512-{remote[1]}"}}})
    source, _ = data_url(b"written by Ignition\n", compress=False)
    files.append({"path": "/etc/k8simg/test-marker", "contents": {"source": source}})
    devices = " ".join(shlex.quote(path_unit_name(d, "device")) for d in DEVICE_WAITS)
    add_script_unit(doc, "k8simg-test-report", REPORT.replace("$ETCD_HEALTH", ETCD_HEALTH)
                    .replace("$REMOTE", REMOTE_PATH).replace("$ETCD_IP", etcd_ip)
                    .replace("$BUSYBOX", BUSYBOX).replace("$DEVICES", devices),
                    "After=multi-user.target k8simg-etcd.service containerd.service "
                    "k8simg-images.service\nWants=k8simg-images.service\n")
    return doc


def add_script(doc: dict, name: str, script: str) -> None:
    """``script`` as ``/usr/local/bin/NAME`` (mode 0755)."""
    source, compression = data_url(script.encode())
    entry = {"path": f"/usr/local/bin/{name}", "mode": 0o755, "contents": {"source": source}}
    if compression:
        entry["contents"]["compression"] = compression
    doc["storage"]["files"].append(entry)


def add_script_unit(doc: dict, name: str, script: str, unit: str) -> None:
    """``script`` as ``/usr/local/bin/NAME``, run once by ``NAME.service`` (enabled) whose
    ``[Unit]`` section is ``unit``."""
    add_script(doc, name, script)
    doc["systemd"]["units"].append({"name": f"{name}.service", "enabled": True, "contents": (
        f"[Unit]\n{unit}[Service]\nType=oneshot\nExecStart=/usr/local/bin/{name}\n"
        "[Install]\nWantedBy=multi-user.target\n")})


def report(console: str, nth: int) -> dict:
    blocks = re.findall(r"K8SIMG-REPORT-BEGIN(.*?)K8SIMG-REPORT-END", console, re.S)
    assert len(blocks) >= nth, console[-3000:]
    out: dict = {"file": {}, "unit": {}, "image": {}, "wait": {}, "early": {},
                 "trouble": "\n".join(systemd_trouble(console))}
    # The serial getty's login prompt may land in the middle of a line: find the keys.
    keys = (r"(cmdline|firstboot-flag|marker|file|hostname|unit|wait|mount|etcd|image|container"
            r"|remote|ssh|machine-id|first-boot|sysusers|early|chronyd)"
            r": (.*)$")
    for ln in blocks[nth - 1].splitlines():
        m = re.search(keys, ln.strip())
        if not m:
            continue
        key, value = m.groups()
        if key in ("file", "unit", "image", "wait", "early"):
            name, _, rest = value.partition(" ")
            out[key][name] = rest.strip()
        else:
            out[key] = value.strip()
    return out


def systemd_trouble(console: str) -> list[str]:
    """systemd's own lines about what timed out or failed, for the failure messages."""
    return [ln for ln in console.splitlines()
            if re.search(r"systemd\[1\]: .*(timed out|Dependency failed|Failed to start)", ln)]


def single_node_machine(image, work, remote: tuple[str, str, int] | None = None, units=None,
                        cpus: int = 2, qemu_args: tuple[str, ...] = ()):
    """A single-node cluster's master, ready to boot: its disk overlay, a blank volume and a
    config drive with its rendered config plus the report unit. The node subnet is a
    loopback range, so etcd binds its planned address with no network.

    :param remote: ``(URL, SHA-512, port on this machine's loopback)`` of a file the config
        names, which the VM reaches through QEMU's user network (nothing else it can reach).
    :param units: ``(config, etcd address) -> config`` adding test units instead of the
        report (the boot benchmark's probes).
    :param cpus: its vCPUs (2, as a flavor's; the local cloud's HA test gives its nodes 1).
    :param qemu_args: more of QEMU's options, after the local cloud's (a later ``-cpu``
        replaces the local cloud's: the boot benchmark's A/B of a CPU model).
    :returns: ``(node, boot)``; ``boot(console)`` starts the VM.
    """
    cd = write_cluster(work / "solo", topology="single",
                       masters={"count": 1, "flavor": "m", "volume_size_gb": 25},
                       workers={"count": 0, "flavor": "w", "volume_size_gb": 50},
                       network={"node_cidr": "127.77.0.0/24", "service_cidr": "10.96.0.0/12",
                                "pod_cidr": "10.244.0.0/16", "dns_domain": "cluster.local",
                                "dns_nameservers": []})
    cluster_pki(cd).ensure()
    ctx = render_context(cd)
    node = ctx.nodes[0]
    if units:
        user_data = dumps(units(render_node(ctx, node), str(node.address)))
    else:
        user_data = dumps(add_test_units(render_node(ctx, node), str(node.address),
                                         remote[:2] if remote else None))
    iso = qemu.config_drive(work / "config.iso", node.name, user_data)
    disk = qemu.overlay(image, work / "root.qcow2")
    volume = qemu.blank_disk(work / "volume.qcow2", 2)
    net = []
    if remote:
        net = ["-netdev", f"user,id=n0,restrict=on,guestfwd=tcp:{GUEST_FILES}-"
                          f"tcp:127.0.0.1:{remote[2]}", "-device", "virtio-net-pci,netdev=n0"]
    return node, lambda console: qemu.boot(node.name, disk, console, config_iso=iso,
                                           volume=volume, cpus=cpus,
                                           extra_args=net + list(qemu_args))


def boot_to_report(boot, console) -> dict:
    """Boot once, wait for the report and the power-off, and parse the report."""
    vm = boot(console)
    try:
        vm.wait_for("K8SIMG-REPORT-END", timeout=900)
        vm.wait_exit(timeout=180)
    finally:
        vm.stop()
    return report(vm.log(), 1)


def test_boots_with_only_a_config_drive(baked_image, tmp_path):
    image, manifest_path, _ = baked_image
    baked = {i["ref"]: i["digest"] for i in json.loads(manifest_path.read_text())[
        "container_images"]}
    served = tmp_path / "served"
    served.mkdir()
    payload = os.urandom(3 << 20)  # a snapshot-sized file would do the same, slower
    (served / "payload").write_bytes(payload)
    sha = hashlib.sha512(payload).hexdigest()
    # (QEMU's forward to the file server connects when QEMU starts: it runs for both boots)
    with file_server(served) as (_url, port):
        _boots(baked, image, tmp_path, sha, port)


def _boots(baked, image, tmp_path, sha, port):
    master, boot = single_node_machine(
        image, tmp_path, (f"http://{GUEST_FILES}/payload", sha, port))
    r = boot_to_report(boot, tmp_path / "console-1.log")
    # The kernel's random pool is ready before Ignition formats the volume: mkfs.ext4 asks for
    # random UUIDs, and without a random source in the emulated CPU it waited 4.3 s for it
    # (under KVM the CPU is the host's, whatever it offers)
    if not qemu.kvm_usable():
        console = (tmp_path / "console-1.log").read_text(errors="replace")
        ready, disks = console.find("random: crng init done"), console.find("ignition-disks")
        assert 0 <= ready < disks, ("the kernel's random pool was not ready before Ignition's "
                                    f"disks stage (console offsets {ready}, {disks}): does "
                                    f"the emulated CPU ({qemu.TCG_CPU}) have RDRAND?")
    # Ignition fetched the remote file at first boot (networkd started in the initramfs as
    # Ignition asked), checked its SHA-512, and wrote it on the volume
    assert r["remote"] == f"{sha} 600", r["remote"]
    assert "ignition.firstboot" in r["cmdline"]
    assert r["marker"] == "present"
    assert r["hostname"] == master.name
    # its own ed25519 host key alone (no RSA key to compute under emulation), sshd serving it
    assert r["ssh"] == "ssh_host_ed25519_key active", r["ssh"]
    # Ignition's presets applied in the initramfs with the node's own machine id: systemd saw
    # no first boot, so no preset of every unit (6 s under emulation); the units it enabled
    # are running (below, and this report's own unit)
    assert re.fullmatch(r"[0-9a-f]{32}", r["machine-id"]), r["machine-id"]
    words = r["first-boot"].split()
    seen = dict(zip(words[::2], words[1::2], strict=True))
    assert int(seen["hostname"]) >= 2, r["first-boot"]  # the query reads PID 1's lines
    assert (seen["detected"], seen["preset"]) == ("0", "0"), r["first-boot"]
    # the initramfs's journal (Ignition's messages) is the node's: the same machine id
    assert int(seen["ignition"]) > 0, r["first-boot"]
    # No system users made on a first boot: every package set its own up at bake
    # (its condition checked, and false: not merely a unit never queued)
    assert r["sysusers"] == "created 0 ran no checked yes", r["sysusers"]
    # resolved and AppArmor run, and sysinit.target (every service) no longer waits for them;
    # chronyd, ordered after AppArmor, is confined by its profile all the same
    assert r["early"] == {"systemd-resolved.service": "active before-sysinit 0",
                          "apparmor.service": "active before-sysinit 0"}, r["early"]
    assert r["chronyd"] == "/usr/sbin/chronyd (enforce)", r["chronyd"]
    assert r["file"]["/etc/kubernetes/pki/apiserver.key"] == "600"
    assert r["file"]["/etc/kubernetes/pki/ca.crt"] == "644"
    assert r["file"]["/etc/kubernetes/super-admin.conf"] == "600"
    assert r["file"]["/etc/kubernetes/manifests/kube-apiserver.yaml"] == "644"
    # Ignition's cached copy of the whole config (every key above, in clear) did not follow
    # the node into its real root's /run
    assert r["file"]["/run/ignition.json"] == "missing", r["file"]
    units = ("containerd.service", "k8simg-etcd.service", "var-lib-containerd.mount")
    assert {u: r["unit"][u] for u in units} == dict.fromkeys(units, "enabled active"), \
        r["trouble"]
    # A late udev does not fail the volume's mounts or the console for good (the image's waits)
    assert r["wait"] == {path_unit_name(d, "device"): DEVICE_TIMEOUT for d in DEVICE_WAITS}
    # the add-on applier found its API server in the node's kubeconfig and waits for it (the
    # test image has no API server): running, not failed
    assert r["unit"]["k8simg-addons.service"] == "enabled active", r["trouble"]
    # no Debian etcd in an image with Kubernetes: k8simg-etcd runs the etcd image's etcd
    assert r["unit"]["etcd.service"].split()[-1] == "inactive"
    assert r["mount"] == "/dev/vdb ext4"
    assert f"https://{master.address}:2379 is healthy" in r["etcd"]
    # Every baked image is in containerd under its manifest name and digest, and runs
    assert r["unit"]["k8simg-images.service"] == "static active"
    assert r["image"] == baked
    assert r["container"].endswith("container-ran"), r["container"]

    r2 = boot_to_report(boot, tmp_path / "console-2.log")  # the same disk, booted again
    assert "ignition.firstboot" not in r2["cmdline"]
    assert r2["firstboot-flag"] == "absent"
    assert r2["marker"] == "absent"  # Ignition did not run again to write it back
    assert r2["unit"]["k8simg-etcd.service"] == "enabled active"
    assert r2["machine-id"] == r["machine-id"]  # the node's own, kept
    assert f"https://{master.address}:2379 is healthy" in r2["etcd"]
