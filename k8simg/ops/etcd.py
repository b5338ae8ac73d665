"""The cluster's etcd seen from the operator's machine: members, health, status, alarms,
membership changes retried while etcd says "too soon", snapshots.

Every request is made with ``etcdctl`` and a client certificate of the cluster's own PKI,
through the cloud's way into the nodes' network (the local cloud's namespace; on OpenStack
a tunnel through the bastion); :class:`Etcd` only needs a function that wraps the command.

The member replacement a rolling upgrade does is :mod:`k8simg.ops.membership`.
"""

import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from k8simg.clouds.base import Cloud
from k8simg.errors import K8simgError
from k8simg.model.plan import client_url, etcd_members


class EtcdError(K8simgError):
    """etcdctl is missing, or etcd did not answer or refused a request."""
    pass


class EtcdctlMissing(EtcdError):
    """etcdctl is not installed here: no wait makes it appear."""


class EtcdAbort(EtcdError):
    """A preflight found etcd not fit for a membership change; nothing was changed."""

    exit_code = 4


@dataclass(frozen=True)
class Member:
    """A member as ``etcdctl member list`` shows it.

    :param name: empty until the member has started.
    :param learner: a learner, not (yet) a voting member.
    """

    id: int
    name: str  # empty until the member has started
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    learner: bool

    @property
    def hex(self) -> str:
        """The member's ID in hex, as etcdctl takes it."""
        return f"{self.id:x}"

    @property
    def started(self) -> bool:
        """Whether the member has started (one only added has no name nor client URLs yet)."""
        return bool(self.name) and bool(self.client_urls)


@dataclass(frozen=True)
class Endpoint:
    """One endpoint's health.

    :param endpoint: the member's client URL (not the one dialed).
    :param detail: the error, or how long the check took.
    """

    endpoint: str
    healthy: bool
    detail: str


@dataclass(frozen=True)
class Status:
    """What one member says of itself and its leader.

    :param endpoint: the member's client URL (not the one dialed).
    :param leader_id: 0 when the member knows no leader (an election is under way, or no quorum).
    """

    endpoint: str
    member_id: int
    leader_id: int  # 0: the member knows no leader (an election is under way, or no quorum)
    raft_index: int
    version: str = ""  # the member's etcd version, as it says


class Etcd:
    """``etcdctl`` against the cluster, with one of its client certificates.

    :param pki_dir: the cluster's ``pki/``.
    :param wrap: turns an argv into one that runs where the members are reachable.
    :param identity: ``healthcheck-client`` (reads) or ``apiserver-etcd-client``.
    :param route: the URL to dial for a member's client URL (a tunnel's local end); results
        still name the member's own URL.
    """

    def __init__(self, pki_dir: Path, wrap: Callable[[list[str]], list[str]] = lambda a: a,
                 identity: str = "healthcheck-client",
                 route: Callable[[str], str] = lambda url: url):
        self.pki_dir = Path(pki_dir)
        self.wrap = wrap
        self.route = route
        self._dialed: dict[str, str] = {}
        if identity == "healthcheck-client":
            self.cert = self.pki_dir / "etcd" / "healthcheck-client"
        else:
            self.cert = self.pki_dir / identity

    def ctl(self, args: list[str], endpoints: list[str], timeout: float = 30,
            command_timeout: float = 10) -> subprocess.CompletedProcess:
        """Run ``etcdctl`` with ``args`` against ``endpoints``; the finished process, whatever its
        exit status.

        :param timeout: seconds the whole command may take.
        :param command_timeout: etcdctl's own deadline for the request (``--command-timeout``;
            for a snapshot, the whole stream).
        :raises EtcdError: when etcdctl is not installed or does not finish in ``timeout``.
        """
        dial = []
        for url in endpoints:
            dial.append(self.route(url))
            self._dialed[dial[-1]] = url
        argv = ["etcdctl", f"--endpoints={','.join(dial)}",
                f"--cacert={self.pki_dir / 'etcd' / 'ca.crt'}",
                f"--cert={self.cert}.crt", f"--key={self.cert}.key",
                "--dial-timeout=3s", f"--command-timeout={command_timeout:.0f}s", *args]
        try:
            return subprocess.run(self.wrap(argv), capture_output=True, text=True,
                                  timeout=timeout,
                                  env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"})
        except FileNotFoundError:
            raise EtcdctlMissing("etcdctl not found: install the Debian package etcd-client"
                                 ) from None
        except subprocess.TimeoutExpired:
            raise EtcdError(f"etcdctl {' '.join(args)}: no answer in {timeout:.0f} s") from None

    def _named(self, dialed: str) -> str:
        return self._dialed.get(dialed, dialed)

    def _json(self, args: list[str], endpoints: list[str]):
        r = self.ctl([*args, "-w", "json"], endpoints)
        if r.returncode != 0:
            raise EtcdError(f"etcdctl {' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
        return json.loads(r.stdout)

    def members(self, endpoints: list[str]) -> list[Member]:
        """The members, learners included.

        :raises EtcdError: when etcdctl fails.
        """
        data = self._json(["member", "list"], endpoints)
        return [Member(m["ID"], m.get("name", ""), tuple(m.get("peerURLs", [])),
                       tuple(m.get("clientURLs", [])), bool(m.get("isLearner")))
                for m in data.get("members", [])]

    def health(self, endpoints: list[str]) -> list[Endpoint]:
        """Each endpoint's health, named by its member's client URL.

        :raises EtcdError: when etcdctl gives no answer to read.
        """
        r = self.ctl(["endpoint", "health", "-w", "json"], endpoints)
        try:
            data = json.loads(r.stdout or "[]")
        except ValueError:
            raise EtcdError(f"etcdctl endpoint health: {r.stderr.strip() or r.stdout}") from None
        return [Endpoint(self._named(e["endpoint"]), bool(e.get("health")),
                         e.get("error") or f"took {e.get('took', '?')}") for e in data]

    def status(self, endpoints: list[str]) -> list[Status]:
        """What each reachable endpoint says (unreachable ones are left out)."""
        r = self.ctl(["endpoint", "status", "-w", "json"], endpoints)
        try:
            data = json.loads(r.stdout or "[]")
        except ValueError:
            return []
        # etcdctl prints the status message as protobuf's JSON: a field that is 0 is left
        # out, "leader" among them while the member knows no leader.
        return [Status(self._named(s["Endpoint"]), s["Status"]["header"]["member_id"],
                       s["Status"].get("leader", 0), s["Status"].get("raftIndex", 0),
                       s["Status"].get("version", ""))
                for s in data]

    def alarms(self, endpoints: list[str]) -> list[str]:
        """The alarms etcd has raised (e.g. ``NOSPACE``), as etcdctl lists them; empty when none.

        :raises EtcdError: when etcdctl fails.
        """
        r = self.ctl(["alarm", "list"], endpoints)
        if r.returncode != 0:
            raise EtcdError(f"etcdctl alarm list: {r.stderr.strip()}")
        return [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]

    def change(self, args: list[str], endpoints: list[str], what: str,
               retry_for: float = 60, ok: Callable[[str], bool] = lambda _e: False) -> str:
        """A membership change, retried while etcd says it is too soon after the last one
        (or, for a promotion, that the learner is not in sync yet).

        :param ok: errors that mean the change is already done.
        """
        deadline = time.monotonic() + retry_for
        delay = 0.5
        while True:
            r = self.ctl(args, endpoints)
            if r.returncode == 0:
                return r.stdout
            err = r.stderr.strip()
            if ok(err):
                return err
            transient = any(s in err for s in (
                "unhealthy cluster", "in sync with leader", "too many requests",
                "leader changed", "no leader", "context deadline exceeded",
                "request timed out"))
            if not transient or time.monotonic() > deadline:
                raise EtcdError(f"{what}: {err}")
            time.sleep(delay)
            delay = min(delay * 1.5, 3)

    def snapshot(self, dest: Path, endpoint: str) -> Path:
        """Save a snapshot of etcd's data from ``endpoint`` as ``dest`` (mode 0600, in place only once
        complete); returns ``dest``.

        :raises EtcdError: when etcdctl fails (the partial file is removed).
        """
        tmp = dest.with_name(f".{dest.name}.part")
        # etcdctl's deadline covers the whole stream: a member busy with its first boot (seen in
        # CI: no stream within 10 s), or a large database through the bastion's tunnel, needs
        # minutes, not the 10 s a request gets.
        r = self.ctl(["snapshot", "save", str(tmp)], [endpoint], timeout=300,
                     command_timeout=280)
        if r.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise EtcdError(f"etcd snapshot from {endpoint}: {r.stderr.strip()}")
        tmp.chmod(0o600)
        tmp.rename(dest)
        return dest


@contextlib.contextmanager
def etcd_client(cloud: Cloud, identity: str = "healthcheck-client") -> Iterator[Etcd]:
    """An etcd client that reaches the members from this machine through the cloud's way in
    (the local cloud's namespace, the bastion's SSH tunnel on OpenStack), open for the
    ``with`` block.

    :raises CloudError: when the members cannot be reached from here.
    """
    with cloud.reach() as reach:
        yield Etcd(cloud.cluster.pki_dir, wrap=reach.wrap, route=reach.route, identity=identity)


def wait_healthy(etcd: Etcd, endpoints: list[str], timeout: float,
                 progress: Callable[[str], None] = lambda _m: None) -> list[Endpoint]:
    """Every member's health, asked every 5 s until all of ``endpoints`` answer healthy or
    ``timeout`` seconds pass; the last answer either way. Progress says how many are healthy
    whenever that changes.

    :raises EtcdError: when etcdctl still gives no answer to read at the end.
    """
    deadline = time.monotonic() + timeout
    said = None
    while True:
        try:
            eps = etcd.health(endpoints)
        except EtcdctlMissing:
            raise
        except EtcdError:  # no answer to read yet (e.g. the members are still booting)
            if time.monotonic() >= deadline:
                raise
            eps = []
        healthy = sum(e.healthy for e in eps)
        if (eps and healthy == len(endpoints)) or time.monotonic() >= deadline:
            return eps
        message = f"etcd: {healthy}/{len(endpoints)} members healthy; waiting"
        if message != said:
            progress(message)
            said = message
        time.sleep(5)


def version_skew(running: list[str], image: str | None) -> str | None:
    """Why members of the versions ``running`` cannot be replaced by members of the image's
    etcd ``image``, or None. etcd upgrades one minor release at a time, and never down: a
    cluster on 3.4 reaches 3.6 through 3.5 (etcd's upgrade guides); an unknown side is no
    objection (an image from before k8simg recorded its etcd)."""
    def line(v: str) -> tuple[int, int]:
        major, minor = v.split(".")[:2]
        return int(major), int(minor)

    known = sorted({line(v) for v in running if v and v[0].isdigit()})
    if not image or not known:
        return None
    target = line(image)
    low, high = known[0], known[-1]
    if target < high:
        return (f"the image's etcd {image} is older than the members' "
                f"{'.'.join(map(str, high))}: etcd is never downgraded by replacement")
    if target[0] != low[0] or target[1] > low[1] + 1:
        return (f"the image's etcd {image} is more than one minor release above the members' "
                f"{'.'.join(map(str, low))}: etcd upgrades one minor release at a time (roll "
                f"onto an image with etcd {low[0]}.{low[1] + 1} first)")
    return None


def planned_endpoints(cluster) -> list[str]:
    """The client URLs of the cluster's etcd members as its node set has them."""
    cfg = cluster.load()
    return [client_url(n) for n in etcd_members(cluster.nodes(cfg), cfg)]
