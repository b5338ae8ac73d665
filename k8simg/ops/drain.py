"""Draining a node before it is replaced, through the Kubernetes API (the official ``kubernetes``
client), the way ``kubectl drain`` does it:

1. cordon: ``spec.unschedulable = true``, so nothing new lands there;
2. evict every pod on it through the Eviction API, which refuses (429) while an eviction would
   break a PodDisruptionBudget; refused evictions are retried until the timeout, never forced;
3. wait until the evicted pods are gone.

DaemonSet pods (their controller puts them back on every node; the node is going anyway) and
static pods (mirror pods: the kubelet owns them) are left alone; finished pods do not block.
Pods without a controller are evicted too (the node is going away), and reported, since
nothing brings them back.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from k8simg.errors import K8simgError
from k8simg.pki import cluster_pki

MIRROR = "kubernetes.io/config.mirror"


class DrainError(K8simgError):
    """A node was not drained, or did not become Ready, in time."""


@dataclass
class DrainResult:
    """What draining ``node`` did; pods are named ``namespace/name``.

    :param left_alone: DaemonSet and static pods, not evicted.
    :param unmanaged: evicted pods that no controller recreates.
    :param refusals: evictions a PodDisruptionBudget refused for a while (every refused try).
    :param seconds: how long the drain took.
    """

    node: str
    evicted: list[str] = field(default_factory=list)
    left_alone: list[str] = field(default_factory=list)  # DaemonSet and static pods
    unmanaged: list[str] = field(default_factory=list)  # evicted, and nothing recreates them
    refusals: int = 0  # evictions a PodDisruptionBudget refused for now
    seconds: float = 0.0


@dataclass(frozen=True)
class ApiAccess:
    """The cluster's Kubernetes API client, or why it cannot be asked.

    :param nothing_runs: no Kubernetes on the nodes at all (an image baked without it):
        nothing to drain, no gate to watch.
    """

    api: object | None
    why_not: str = ""
    nothing_runs: bool = False


def api_access(cluster, cfg, *, has_kubernetes: bool,
               make: Callable[[], object] | None = None) -> ApiAccess:
    """How ``upgrade`` and ``deploy`` reach the API: ``make()`` when given (tests), else the
    cluster's admin kubeconfig, asked for its version once so that an API that does not answer
    is found before any node is touched.

    :param has_kubernetes: whether the nodes' image carries Kubernetes (:class:`ImageFacts`).
    """
    if make is not None:
        return ApiAccess(make())
    if not has_kubernetes:
        return ApiAccess(None, "the image was baked without Kubernetes binaries: no API server",
                         nothing_runs=True)
    if cfg.is_local:
        return ApiAccess(None, "the local cloud's API is inside its network namespace, which "
                               "this version does not reach with the Kubernetes client")
    from kubernetes import client

    # From the PKI's files, not admin.conf: loading a kubeconfig with embedded credentials
    # writes the cluster-admin key to /tmp, where a killed run leaves it.
    try:
        url, ca, crt, key = cluster_pki(cluster, cfg).client_credentials("admin")
    except K8simgError as e:  # skippable like any other reason the API cannot be asked
        return ApiAccess(None, f"no cluster-admin credentials to ask it with ({e})"[:300])
    try:
        conf = client.Configuration()
        conf.host, conf.ssl_ca_cert = url, str(ca)
        conf.cert_file, conf.key_file = str(crt), str(key)
        api = client.ApiClient(conf)
        client.VersionApi(api).get_code(_request_timeout=10)
    except Exception as e:  # any failure to reach it is reported, not hidden
        return ApiAccess(None, f"the API does not answer ({type(e).__name__}: {e})"[:300])
    return ApiAccess(api)


def _key(pod) -> str:
    return f"{pod.metadata.namespace}/{pod.metadata.name}"


def _controller(pod) -> str | None:
    for ref in pod.metadata.owner_references or []:
        if ref.controller:
            return ref.kind
    return None


def cordon(core, node: str) -> None:
    """``spec.unschedulable = true``: nothing new lands on ``node``."""
    core.patch_node(node, {"spec": {"unschedulable": True}})


def classify(pods) -> tuple[list, list, list]:
    """``(to evict, left alone, unmanaged among those to evict)``."""
    evict, alone, unmanaged = [], [], []
    for p in pods:
        if (p.metadata.annotations or {}).get(MIRROR) or _controller(p) == "DaemonSet":
            alone.append(p)
            continue
        if p.status is not None and p.status.phase in ("Succeeded", "Failed"):
            continue  # finished: nothing to move
        evict.append(p)
        if _controller(p) is None:
            unmanaged.append(p)
    return evict, alone, unmanaged


def drain(api_client, node: str, *, timeout: float = 600, poll: float = 1.0,
          progress: Callable[[str], None] = lambda _m: None) -> DrainResult:
    """Cordon ``node`` and evict its pods, honouring PodDisruptionBudgets.

    :raises DrainError: when the pods are not gone within ``timeout`` (naming those left and
        the last refusal); the node stays cordoned.
    """
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api_client)
    started = time.monotonic()
    result = DrainResult(node)
    cordon(core, node)
    progress(f"{node}: cordoned")
    pods = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items
    evict, alone, unmanaged = classify(pods)
    result.left_alone = [_key(p) for p in alone]
    result.unmanaged = [_key(p) for p in unmanaged]
    pending = {_key(p): p for p in evict}
    uids = {_key(p): p.metadata.uid for p in evict}
    refused: dict[str, str] = {}
    deadline = started + timeout
    while pending:
        for key, pod in sorted(pending.items()):
            body = client.V1Eviction(metadata=client.V1ObjectMeta(
                name=pod.metadata.name, namespace=pod.metadata.namespace))
            try:
                core.create_namespaced_pod_eviction(pod.metadata.name, pod.metadata.namespace,
                                                    body)
            except ApiException as e:
                if e.status == 404:  # already gone
                    pass
                elif e.status == 429:  # a PodDisruptionBudget says not now
                    result.refusals += 1
                    refused[key] = _message(e)
                    continue
                else:
                    raise DrainError(f"{node}: evicting {key}: HTTP {e.status} {_message(e)}") \
                        from None
            refused.pop(key, None)
            del pending[key]
            result.evicted.append(key)
            progress(f"{node}: evicted {key}")
        if pending:
            if time.monotonic() > deadline:
                raise DrainError(f"{node}: not drained after {timeout:.0f} s; still there: "
                                 + "; ".join(f"{k} ({refused.get(k, 'not evicted yet')})"
                                             for k in sorted(pending)))
            time.sleep(poll)
    # Evicted pods terminate gracefully: wait until none of them is on the node any more.
    while True:
        left = [_key(p) for p in core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={node}").items
            if uids.get(_key(p)) == p.metadata.uid]
        if not left:
            break
        if time.monotonic() > deadline:
            raise DrainError(f"{node}: evicted pods still terminating after {timeout:.0f} s: "
                             + ", ".join(sorted(left)))
        time.sleep(poll)
    result.seconds = time.monotonic() - started
    return result


def wait_ready(api_client, node: str, *, timeout: float = 900, poll: float = 2.0) -> None:
    """Wait for ``node`` to register and report Ready.

    :raises DrainError: naming its last condition when it does not within ``timeout``.
    """
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api_client)
    deadline = time.monotonic() + timeout
    last = "not registered"
    while True:
        try:
            n = core.read_node(node)
            ready = next((c for c in (n.status.conditions or []) if c.type == "Ready"), None)
            if ready is not None and ready.status == "True":
                return
            last = f"Ready={ready.status} ({ready.reason})" if ready else "no Ready condition"
        except ApiException as e:
            if e.status != 404:
                raise
        if time.monotonic() > deadline:
            raise DrainError(f"node {node} not Ready after {timeout:.0f} s: {last}")
        time.sleep(poll)


def _message(e) -> str:
    import json

    try:
        return json.loads(e.body).get("message", e.reason)
    except (TypeError, ValueError):
        return str(e.reason)
