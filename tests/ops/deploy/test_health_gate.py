"""deploy's last gate: it returns once every etcd member answers healthy, asked as
`k8simg etcd health` asks (the cluster's healthcheck client, through the cloud's way in), and
otherwise fails naming the members that did not. Against real etcd (Debian's etcd-server) on
loopback, each member run exactly as its rendered master config defines it."""

import contextlib
import threading
import time

import pytest

from k8simg.clouds.base import CloudError, Reach
from k8simg.model.plan import client_url, peer_url
from k8simg.ops.deploy import ControlPlaneUnhealthy, Deployment
from k8simg.ops.etcd import Etcd
from tests.conftest import write_cluster
from tests.ops.upgrade.cloud_double import CloudDouble
from tests.ops.upgrade.test_etcd_roll import NET, Members
from tests.support import etcd_available, processes, wait_until

pytestmark = pytest.mark.skipif(not etcd_available(), reason="etcd-server/etcd-client missing")


class OnLoopback(CloudDouble):
    """The nodes' addresses are loopback ones: this machine reaches them directly, after
    ``closed`` refusals (as a bastion still booting refuses the tunnel)."""

    closed = 0

    def unreachable(self):
        return None

    @contextlib.contextmanager
    def reach(self):
        if self.closed:
            self.closed -= 1
            raise CloudError("the bastion at 203.0.113.9 refused the SSH tunnel")
        yield Reach()


def test_deploy_waits_for_every_member_and_names_one_that_never_answers(tmp_path):
    cd = write_cluster(tmp_path / "gate", topology="ha",
                       workers={"count": 0, "flavor": "x", "volume_size_gb": 10},
                       bastion={"enabled": False}, network=NET)
    said: list[str] = []
    with processes(kill=True) as start:
        members = Members(cd, start, tmp_path)
        masters = [members.nodes[f"gate-master-{i}"] for i in range(3)]
        first = [(n.name, peer_url(n)) for n in masters]
        for n in masters[:2]:
            members.start(n, first, joining=False)  # quorum; the third never boots
        two = Etcd(cd.pki_dir, identity="healthcheck-client")
        wait_until(lambda: all(e.healthy for e in two.health([client_url(n) for n in
                                                             masters[:2]])), 90,
                   "two healthy members with a leader")
        cloud = OnLoopback(cd, api=None, image="img")
        cloud.ledger.progress = said.append
        d = Deployment(cd, cloud, health_timeout=15)
        started = time.monotonic()
        with pytest.raises(ControlPlaneUnhealthy) as e:
            d.wait_healthy()
        assert time.monotonic() - started >= 15  # it waited its bound
        assert [x.split(":")[0] + ":" + x.split(":")[1] for x in e.value.sick] == [
            "https://127.77.0.12"]
        assert "etcd is not healthy 15 s after the nodes came up" in str(e.value)
        assert f"everything else is in place: `k8simg deploy {cd.path}` waits again" \
            in str(e.value)
        assert "etcd: 2/3 members healthy; waiting" in said

        # The third member boots while deploy waits: it returns, all three healthy.
        said.clear()
        later = threading.Timer(6, members.start, (masters[2], first), {"joining": False})
        later.start()
        try:
            Deployment(cd, cloud, health_timeout=120).wait_healthy()
        finally:
            later.cancel()
        assert said[0] == "waiting for etcd: 3 member(s) healthy (up to 120 s)"
        assert said[-1].startswith("etcd: 3/3 members healthy after ")

        # The way in refused twice (a bastion still booting): tried again until it opens.
        said.clear()
        cloud.closed = 2
        Deployment(cd, cloud, health_timeout=120).wait_healthy()
        assert said[1] == ("etcd: not reached yet (the bastion at 203.0.113.9 refused the SSH "
                           "tunnel); waiting")
        assert said[-1].startswith("etcd: 3/3 members healthy after ") and cloud.closed == 0

        # No wait asked for (the library's default, `deploy --no-wait`): nothing is asked.
        said.clear()
        Deployment(cd, cloud).wait_healthy()
        assert said == []

        # No way in by the cluster's design (on OpenStack: no bastion): said, not waited for.
        blind = CloudDouble(cd, api=None, image="img")
        blind.ledger.progress = said.append
        d = Deployment(cd, blind, health_timeout=900)
        started = time.monotonic()
        d.wait_healthy()
        assert time.monotonic() - started < 5
        assert d.warnings == ["etcd's health was not asked (the nodes' network on the cloud "
                              "test double is not reachable from here); deploy did not wait "
                              "for it"]
