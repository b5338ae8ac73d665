"""The replacement of one member by another (:func:`replace_member`) follows what etcd requires
and what it takes to lose no write:

1. preflight, as Cluster API's control-plane controller does before touching a member: every
   voting member healthy, as many voters as expected, no alarm;
2. the new member is added as a **learner** (it takes no part in quorum while it catches up);
3. it is started (the caller boots the node, whose etcd starts with
   ``initial-cluster-state=existing`` and the member list as it is now);
4. it is **promoted** once etcd says it is in sync;
5. if the member to be removed is the leader, **leadership is moved** to another voter first,
   so the removal costs no election;
6. the old member is removed, then its node stopped.

Each step looks at the member list first, so a run interrupted anywhere and run again goes on
where it stopped; a learner added by an interrupted run that never started (it blocks the next
learner add and cannot be promoted) is removed. etcd 3.4 refuses a membership change for about
5 s after the previous one ("unhealthy cluster", its strict reconfiguration check): those are
retried with backoff.
"""

import time
from collections.abc import Callable

from k8simg.model.plan import Node, client_url, peer_url
from k8simg.ops.etcd import Endpoint, Etcd, EtcdAbort, EtcdError, Member

Events = Callable[[str, dict], None]


def preflight(etcd: Etcd, endpoints: list[str], voters: int) -> list[Member]:
    """Cluster API's checks before a membership change: every voting member started and
    healthy, ``voters`` of them, no alarm. Returns the member list.

    :raises EtcdAbort: naming what is wrong; nothing has been changed.
    """
    members = etcd.members(endpoints)
    voting = [m for m in members if not m.learner]
    problems = []
    if len(voting) != voters:
        problems.append(f"{len(voting)} voting members, expected {voters}")
    started = [m for m in voting if m.started]
    if len(started) != len(voting):
        problems.append("voting members not started: "
                        + ", ".join(m.hex for m in voting if not m.started))
    health = {e.endpoint: e for e in etcd.health([u for m in started for u in m.client_urls])}
    for m in started:
        bad = _unhealthy(health, m)
        if bad:
            problems.append(f"member {m.name} unhealthy: " + "; ".join(bad))
    alarms = etcd.alarms(endpoints) if not problems else []
    if alarms:
        problems.append("alarms: " + ", ".join(alarms))
    if problems:
        raise EtcdAbort("etcd is not fit for a membership change; nothing was changed: "
                        + "; ".join(problems))
    return members


def _unhealthy(health: dict[str, Endpoint], m: Member) -> list[str]:
    """What each of ``m``'s client URLs that is not healthy said ("no answer" for one that
    ``health``, an ``endpoint health`` by member URL, lacks)."""
    return [health[u].detail if u in health else "no answer" for u in m.client_urls
            if not (u in health and health[u].healthy)]


def voter_urls(members: list[Member]) -> list[str]:
    """Where membership changes go: started voting members (a learner refuses them)."""
    return [u for m in members if m.started and not m.learner for u in m.client_urls]


def by_peer(members: list[Member], node: Node) -> Member | None:
    return next((m for m in members if peer_url(node) in m.peer_urls), None)


def replace_member(etcd: Etcd, old: Node, new: Node, *, voters: int,
                   start: Callable[[Node, list[tuple[str, str]]], None],
                   stop: Callable[[Node], None], endpoints: Callable[[], list[str]],
                   events: Events = lambda _step, _detail: None, timeout: float = 600,
                   hook: Callable[[str], None] = lambda _step: None,
                   before_remove: Callable[[], None] = lambda: None) -> None:
    """Replace the member on ``old`` by one on ``new`` (see the module's docstring).

    :param voters: how many voting members the cluster has when it is whole.
    :param start: boots ``new`` given the initial cluster ``[(name, peer URL)]`` it must start
        with; must do nothing if ``new`` already runs.
    :param stop: stops ``old`` for good; must do nothing if it is already gone.
    :param endpoints: client URLs to find the members by (any live ones); changes go to the
        started voters among them.
    :param events: called with each step done, for progress and CI events.
    :param hook: called before each step with its name (tests interrupt the roll here).
    :param before_remove: called once the new member is healthy, before the old one goes
        (the upgrade moves the API load balancer's members there).
    :raises EtcdAbort: when the preflight finds etcd unfit (nothing changed).
    """
    members = etcd.members(endpoints())
    mine, theirs = by_peer(members, new), by_peer(members, old)
    if theirs is None and mine is not None and mine.started and not mine.learner:
        hook("stop")
        stop(old)  # an earlier run removed the member; the node may still run
        events("old-stopped", {"node": old.name})
        return

    _remove_stale_learners(etcd, members, mine, events, hook)
    expected = voters if (mine is None or mine.learner) else voters + 1
    members = preflight(etcd, endpoints(), expected)
    _add_start_promote(etcd, new, members, start, endpoints, events, hook, timeout)

    theirs = by_peer(etcd.members(endpoints()), old)
    if theirs is not None:
        hook("before-remove")
        before_remove()
        hook("move-leader")
        move_leader_off(etcd, theirs, new, endpoints)
        events("leader-checked", {"node": old.name})
        hook("remove")
        # Two voters (a single master's roll) both have to commit the removal: a member
        # slow under load (seen: a minute of deadlines) is waited for, as a promotion is.
        etcd.change(["member", "remove", theirs.hex], [client_url(new)],
                    f"remove {old.name}", retry_for=timeout,
                    ok=lambda e: "member not found" in e)
        events("removed", {"node": old.name, "member": theirs.hex})
    hook("stop")
    stop(old)
    events("old-stopped", {"node": old.name})


def remove_lost_members(etcd: Etcd, lost: list[Node], endpoints: list[str],
                        events: Events = lambda _step, _detail: None,
                        timeout: float = 30) -> list[Member]:
    """Remove the members of ``lost``, nodes whose servers are gone for good (deleted outside
    k8simg, or with their host), as etcd's guide has a failed member replaced: removed first,
    while the others keep quorum; their replacements are added after. Returns those removed.

    A turn of an upgrade removes a member before deleting its node; a member left behind by a
    node that went another way can never answer again, counts against quorum for as long as
    it is listed, and fails every later preflight.

    :param endpoints: client URLs of the members that are not lost.
    :raises EtcdAbort: when one of them still answers, or another voter is not healthy (then
        too few may be left to commit the removal; with quorum lost the way back is a
        restore); nothing is changed.
    """
    members = etcd.members(endpoints)
    gone = [m for m in (by_peer(members, n) for n in lost) if m is not None]
    if not gone:
        return []
    ids = {m.id for m in gone}
    voting = [m for m in members if not m.learner]
    others = [m for m in voting if m.id not in ids]
    health = {e.endpoint: e for e in etcd.health(
        [u for m in (*gone, *others) if m.started for u in m.client_urls])}

    def answers(m: Member) -> bool:
        return m.started and not _unhealthy(health, m)

    def said(m: Member) -> str:
        return f"{m.name or m.hex} ({'; '.join(_unhealthy(health, m)) or 'not started'})"

    alive = [m for m in gone if answers(m)]
    if alive:
        raise EtcdAbort("etcd member " + ", ".join(m.name or m.hex for m in alive)
                        + " still answers although the cloud has no server for it: it runs "
                        "somewhere this cluster's cloud account does not see; stop it, or "
                        "remove it with etcdctl, and run again; nothing was changed")
    unwell = [m for m in others if not answers(m)]
    if unwell or len(others) <= len(voting) // 2:
        names = ", ".join(m.name or m.hex for m in gone)
        raise EtcdAbort(f"etcd member {names} is lost with its server, and "
                        + (f"{', '.join(said(m) for m in unwell)} not healthy either"
                           if unwell else "too few voting members are left")
                        + ": its removal needs the others whole (with quorum lost, restore "
                        "from a snapshot: `k8simg restore`); nothing was changed")
    for m in gone:
        etcd.change(["member", "remove", m.hex], voter_urls(others),
                    f"remove the lost member {m.name or m.hex}",
                    ok=lambda e: "member not found" in e)
        events("lost-member-removed", {"member": m.hex, "name": m.name})
    # `member list` is each member's own view (etcd 3.4): wait until every voter has applied
    # the removals, so the next preflight counts what it should
    deadline = time.monotonic() + timeout
    for m in others:
        while ids & {x.id for x in etcd.members(list(m.client_urls))}:
            if time.monotonic() > deadline:
                raise EtcdError(f"{m.name} still lists a removed member {timeout:.0f} s on")
            time.sleep(0.5)
    return gone


def _remove_stale_learners(etcd: Etcd, members: list[Member], mine: Member | None,
                           events: Events, hook: Callable[[str], None]) -> None:
    """Learners: ours (``mine``, added by an interrupted run) is kept; any other that never
    started blocks the next learner add and can never be promoted: it is removed."""
    for m in members:
        if m.learner and m is not mine:
            if m.started:
                raise EtcdAbort(f"etcd has a started learner {m.name} ({m.hex}) that k8simg "
                                "did not add; resolve it first")
            hook("remove-stale-learner")
            etcd.change(["member", "remove", m.hex], voter_urls(members),
                        f"remove stale learner {m.hex}",
                        ok=lambda e: "member not found" in e)
            events("stale-learner-removed", {"member": m.hex, "peer_urls": list(m.peer_urls)})


def _add_start_promote(etcd: Etcd, new: Node, members: list[Member],
                       start: Callable[[Node, list[tuple[str, str]]], None],
                       endpoints: Callable[[], list[str]], events: Events,
                       hook: Callable[[str], None], timeout: float) -> None:
    """The member on ``new`` added as a learner (unless ``members`` lists it), started with
    the member list as it is, promoted once in sync, healthy."""
    mine = by_peer(members, new)
    if mine is None:
        hook("add-learner")
        # A timed-out add may have been applied: then its retry finds the peer URL taken.
        etcd.change(["member", "add", new.name, f"--peer-urls={peer_url(new)}", "--learner"],
                    voter_urls(members), f"add {new.name} as a learner",
                    ok=lambda e: "Peer URLs already exists" in e)
        members, mine = listed(etcd, endpoints, new)
        events("learner-added", {"node": new.name, "member": mine.hex})

    hook("start")
    initial = [(m.name or new.name, m.peer_urls[0]) for m in members]
    start(new, initial)
    events("started", {"node": new.name})

    if mine.learner:
        hook("promote")
        # Refused ("...which is in sync with leader") until it has caught up; an earlier
        # run may have promoted it already ("...can only promote a learner member").
        etcd.change(["member", "promote", mine.hex], voter_urls(members),
                    f"promote {new.name}",
                    retry_for=timeout,
                    ok=lambda e: e.rstrip().endswith("can only promote a learner member"))
        events("promoted", {"node": new.name, "member": mine.hex})
    wait_healthy(etcd, client_url(new), timeout)


def listed(etcd: Etcd, endpoints: Callable[[], list[str]], node: Node,
           timeout: float = 30) -> tuple[list[Member], Member]:
    """The member list once it shows the member on ``node``, and that member.

    ``member list`` is answered from the asked member's own view (etcd 3.4 does not make it
    linearizable): right after an add, a follower that has not applied it yet lists the cluster
    without the new member.

    :raises EtcdError: when no member lists it within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        members = etcd.members(endpoints())
        mine = by_peer(members, node)
        if mine is not None:
            return members, mine
        if time.monotonic() > deadline:
            raise EtcdError(f"etcd does not list a member for {node.name} ({peer_url(node)}) "
                            f"{timeout:.0f} s after it was added")
        time.sleep(0.5)


def wait_healthy(etcd: Etcd, endpoint: str, timeout: float) -> None:
    """Wait until ``endpoint`` reports healthy.

    :raises EtcdError: when it does not within ``timeout`` seconds (with its last answer).
    """
    deadline = time.monotonic() + timeout
    while True:
        got = etcd.health([endpoint])
        if got and got[0].healthy:
            return
        if time.monotonic() > deadline:
            raise EtcdError(f"{endpoint} not healthy after {timeout:.0f} s: "
                            f"{got[0].detail if got else 'no answer'}")
        time.sleep(1)


def move_leader_off(etcd: Etcd, leaving: Member, to: Node,
                    endpoints: Callable[[], list[str]], wait_for_leader: float = 60) -> bool:
    """If ``leaving`` leads, hand leadership to the member on ``to`` first; returns whether
    it had to.

    While ``leaving`` knows no leader (an election under way: on a starved node a missed
    heartbeat is enough) it is asked again, for up to ``wait_for_leader`` seconds: taking that
    for "not the leader" would remove the member the election may be about to make leader.
    """
    deadline = time.monotonic() + wait_for_leader
    failed = 0
    while True:
        statuses = etcd.status(list(leaving.client_urls))
        if not statuses:
            return False  # not answering: its removal costs no leader it holds
        if statuses[0].leader_id == 0:
            if time.monotonic() > deadline:
                raise EtcdError(f"{leaving.name} knows no leader after {wait_for_leader:.0f} s "
                                "(an election that does not end, or no quorum); not removing it")
            time.sleep(1)
            continue
        if statuses[0].leader_id != leaving.id:
            return False
        _, target = listed(etcd, endpoints, to)
        r = etcd.ctl(["move-leader", f"{target.id:x}"], list(leaving.client_urls))
        if r.returncode == 0:
            return True
        failed += 1
        if failed == 10:
            raise EtcdError(f"could not move leadership off {leaving.name}: {r.stderr.strip()}")
        time.sleep(1)
