"""Task-level verbs over openstacksdk proxies: find what the cluster owns, ensure it exists,
wait for it, delete it. Everything created carries the cluster's tag (metadata where a service
has no tags, the name where it has neither), so a re-run finds it and destroy misses nothing.

Every ``ensure_*`` returns the resource and records a :class:`k8simg.provider.Change`; with
``dry_run`` nothing is created and the missing resource is recorded as a planned creation
(``None`` is returned, and what depends on it is planned as a creation in turn).
"""

import base64
import time
from collections.abc import Callable

from k8simg.openstack import CloudError

SERVER_MICROVERSION = "2.67"  # server tags at create (2.52), BDM volume_type (2.67)


class WaitTimeout(CloudError):
    """A resource did not reach the wanted state in time."""


def cluster_tag(cluster: str) -> str:
    return f"k8simg-cluster-{cluster}"


def wait_for(what: str, fetch: Callable[[], object], *, ok: set[str], failures: set[str],
             attribute: str = "status", timeout: float = 600, interval: float = 1.0,
             describe: Callable[[object], str] = lambda _r: ""):
    """Poll ``fetch`` until ``attribute`` is in ``ok``.

    :raises CloudError: when it reaches one of ``failures`` (with ``describe``'s detail).
    :raises WaitTimeout: naming ``what`` and the last state seen. A resource the API no
        longer returns has the state ``GONE``.
    """
    deadline = time.monotonic() + timeout
    last = None
    while True:
        res = fetch()
        state = getattr(res, attribute, None) if res is not None else "GONE"
        if state in ok:
            return res
        if state in failures:
            detail = describe(res)
            raise CloudError(f"{what} went to {state}" + (f": {detail}" if detail else ""))
        last = state
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f} s waiting for {what} to become "
                              f"{'/'.join(sorted(ok))} (last seen {last})")
        time.sleep(interval)


def server_fault(server) -> str:
    fault = getattr(server, "fault", None) or {}
    return fault.get("message", "") if isinstance(fault, dict) else str(fault)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
