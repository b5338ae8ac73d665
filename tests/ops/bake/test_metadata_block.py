"""The image's metadata-service block (elements/k8simg-node/static/etc/k8simg/
metadata-block.nft), loaded with the real nft into a network namespace that stands for a node
on this kernel: a pod's request (forwarded by the node) and the node's own are refused, while
a metadata responder stands at 169.254.169.254 and answered both before the block; every
other address stays reachable. The same ruleset on a booted node, probed from a network
namespace there against the local cloud's responder, is in
tests/clouds/local/test_local_cloud.py."""

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

RULESET = (Path(__file__).parents[3] / "elements" / "k8simg-node" / "static" / "etc"
           / "k8simg" / "metadata-block.nft")

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft"),
                                reason="needs root and nft (Debian's nftables)")


def sh(*argv, check=True):
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=check,
                          timeout=60)


def fetch(ns: str, url: str) -> str:
    """What ``url`` answers from namespace ``ns``: its body, or the error."""
    r = sh("ip", "netns", "exec", ns, "python3", "-c",
           "import sys, urllib.request\n"
           "try:\n"
           "    print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())\n"
           "except Exception as e:\n"
           "    print(f'failed: {e}')", url, check=False)
    return r.stdout.strip()


@pytest.fixture
def topology(tmp_path):
    """cloud (the metadata responder at 169.254.169.254, and 10.77.0.1) -- node -- pod."""
    tag = uuid.uuid4().hex[:6]
    cloud, node, pod = (f"k8t-{x}-{tag}" for x in ("cloud", "node", "pod"))
    server = None
    try:
        for ns in (cloud, node, pod):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", f"c{tag}", "netns", cloud, "type", "veth",
           "peer", "name", f"n{tag}", "netns", node)
        sh("ip", "link", "add", f"p{tag}", "netns", pod, "type", "veth",
           "peer", "name", f"q{tag}", "netns", node)
        for ns, dev, addr in ((cloud, f"c{tag}", "10.77.0.1/24"), (node, f"n{tag}", "10.77.0.2/24"),
                              (node, f"q{tag}", "10.78.0.1/30"), (pod, f"p{tag}", "10.78.0.2/30")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", cloud, "addr", "add", "169.254.169.254/32", "dev", f"c{tag}")
        sh("ip", "-n", cloud, "addr", "add", "fe80::a9fe:a9fe/64", "dev", f"c{tag}", "nodad")
        sh("ip", "-n", node, "addr", "add", "fe80::2/64", "dev", f"n{tag}", "nodad")
        sh("ip", "-n", cloud, "route", "add", "10.78.0.0/30", "via", "10.77.0.2")
        sh("ip", "-n", node, "route", "add", "default", "via", "10.77.0.1")
        sh("ip", "-n", pod, "route", "add", "default", "via", "10.78.0.1")
        sh("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        (tmp_path / "openstack" / "latest").mkdir(parents=True)
        (tmp_path / "openstack" / "latest" / "user_data").write_text("the node's user_data")
        server = subprocess.Popen(
            ["ip", "netns", "exec", cloud, "python3", "-m", "http.server", "80", "--bind", "::",
             "--directory", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(50):
            if "user_data" in fetch(node, "http://10.77.0.1/openstack/latest/user_data"):
                break
            subprocess.run(["sleep", "0.1"])
        yield cloud, node, pod, f"n{tag}"
    finally:
        if server is not None:
            server.kill()
            server.wait()
        for ns in (cloud, node, pod):
            sh("ip", "netns", "delete", ns, check=False)


def test_pods_and_the_node_are_refused_the_metadata_service(topology):
    cloud, node, pod, uplink = topology
    v4 = "http://169.254.169.254/openstack/latest/user_data"
    v6 = f"http://[fe80::a9fe:a9fe%{uplink}]/openstack/latest/user_data"
    other = "http://10.77.0.1/openstack/latest/user_data"
    # the responder stands there: without the block, both get the user_data
    assert fetch(pod, v4) == fetch(node, v4) == fetch(node, v6) == "the node's user_data"

    sh("ip", "netns", "exec", node, "nft", "-f", RULESET)
    assert fetch(pod, v4).startswith("failed:")
    assert fetch(node, v4).startswith("failed:")
    assert fetch(node, v6).startswith("failed:")
    # nothing else is refused
    assert fetch(pod, other) == fetch(node, other) == "the node's user_data"
    # each refusal was counted by its rule; loading the file again replaces, never doubles
    sh("ip", "netns", "exec", node, "nft", "-f", RULESET)
    listed = sh("ip", "netns", "exec", node, "nft", "list", "table", "inet",
                "k8simg_metadata").stdout
    assert listed.count("169.254.169.254") == 2 and listed.count("fe80::a9fe:a9fe") == 2
