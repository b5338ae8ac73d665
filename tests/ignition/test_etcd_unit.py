"""The image's etcd unit waits for the member's own address, not for network-online.target
(which sits behind systemd-resolved's start): its ExecStartPre, run here by /bin/sh as
systemd hands it over (``$$`` and ``%%`` unescaped), against this machine's own routing
table (it only asks ``ip route get``)."""

import os
import re
import subprocess

from k8simg.ignition.image import image_files
from k8simg.model.versions import DEFAULT_KUBERNETES_VERSION

UNIT = "/etc/systemd/system/k8simg-etcd.service"


def wait_command(limit: int | None = None) -> list[str]:
    unit = image_files(DEFAULT_KUBERNETES_VERSION)[UNIT][1]
    line = re.search(r"^ExecStartPre=(.*?)\n(?=\S)", unit, re.S | re.M).group(1)
    # systemd: a trailing backslash continues the line; "$$" is "$" and "%%" is "%"
    line = line.replace("\\\n", " ").replace("$$", "$").replace("%%", "%")
    shell, flag, _ = line.split(" ", 2)
    argv = [shell, flag, re.search(r"'(.*)'", line).group(1)]
    if limit is not None:
        argv[2] = argv[2].replace("-lt 1800", f"-lt {limit}")
    return argv


def run(argv, peer_url):
    return subprocess.run(argv, env={**os.environ, "ETCD_LISTEN_PEER_URLS": peer_url},
                          capture_output=True, text=True, timeout=30)


def test_etcd_follows_networkd_not_network_online():
    unit = image_files(DEFAULT_KUBERNETES_VERSION)[UNIT][1]
    after = re.search(r"^After=(.*)$", unit, re.M).group(1).split()
    assert "network-online.target" not in after and "network.target" not in after
    assert {"systemd-networkd.service", "var-lib-etcd.mount"} <= set(after)
    assert "Wants=network-online.target" not in unit


def test_an_address_on_an_interface_starts_etcd_at_once():
    r = run(wait_command(), "https://127.0.0.1:2380")
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_an_address_never_seen_fails_with_its_name():
    # 10.255.255.7/32 on no interface here; the wait shortened from 180 s to 0.3 s
    r = run(wait_command(limit=3), "https://10.255.255.7:2380")
    assert r.returncode == 1
    assert r.stderr.strip() == "10.255.255.7 is not a local address after 180 s"


def test_a_loopback_address_no_interface_lists_is_local():
    """The boot test's nodes bind 127.77.0.10, which no interface lists (lo has 127.0.0.1/8):
    the kernel's local table says etcd can bind it, and that is what the wait asks."""
    r = run(wait_command(limit=3), "https://127.77.0.10:2380")
    assert r.returncode == 0, r.stderr
