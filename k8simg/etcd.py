"""The cluster's etcd seen from the operator's machine: member list and health, asked with
``etcdctl`` and the cluster's own ``etcd/healthcheck-client`` certificate, through the
provider's way into the nodes' network (the local cloud's namespace)."""

import json
import subprocess
from dataclasses import dataclass

from k8simg.errors import K8simgError
from k8simg.plan import etcd_members, initial_nodes
from k8simg.provider import Provider


@dataclass(frozen=True)
class Endpoint:
    endpoint: str
    healthy: bool
    detail: str


def etcdctl(provider: Provider, args: list[str], endpoints: list[str] | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess:
    """Run ``etcdctl args`` against the cluster's members (the planned ones by default)."""
    cfg = provider.cfg
    pki = provider.cluster.pki_dir / "etcd"
    if endpoints is None:
        endpoints = [f"https://{n.address}:2379" for n in etcd_members(initial_nodes(cfg), cfg)]
    argv = ["etcdctl", f"--endpoints={','.join(endpoints)}", f"--cacert={pki / 'ca.crt'}",
            f"--cert={pki / 'healthcheck-client.crt'}", f"--key={pki / 'healthcheck-client.key'}",
            "--dial-timeout=5s", "--command-timeout=10s", *args]
    try:
        return subprocess.run(provider.in_network(argv), capture_output=True, text=True,
                              timeout=timeout,
                              env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"})
    except FileNotFoundError:
        raise K8simgError("etcdctl not found: install the Debian package etcd-client") from None
    except subprocess.TimeoutExpired:
        raise K8simgError(f"etcdctl {' '.join(args)}: no answer in {timeout:.0f} s") from None


def health(provider: Provider) -> list[Endpoint]:
    """Each planned member's health (``endpoint health``)."""
    r = etcdctl(provider, ["endpoint", "health", "-w", "json"])
    try:
        data = json.loads(r.stdout or "[]")
    except ValueError:
        raise K8simgError(f"etcdctl endpoint health: {r.stderr.strip() or r.stdout}") from None
    return [Endpoint(e["endpoint"], bool(e.get("health")), e.get("error") or
                     f"took {e.get('took', '?')}") for e in data]


def members(provider: Provider) -> list[dict]:
    """The member list as etcd has it: name, peer and client URLs, learner or not."""
    r = etcdctl(provider, ["member", "list", "-w", "json"])
    if r.returncode != 0:
        raise K8simgError(f"etcdctl member list: {r.stderr.strip()}")
    out = []
    for m in json.loads(r.stdout).get("members", []):
        out.append({"id": f"{m['ID']:x}", "name": m.get("name", ""),
                    "peer_urls": m.get("peerURLs", []), "client_urls": m.get("clientURLs", []),
                    "learner": bool(m.get("isLearner"))})
    return out
