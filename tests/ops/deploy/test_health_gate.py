"""deploy's last gate: it returns once every etcd member answers healthy, asked as
`k8simg etcd health` asks (the cluster's healthcheck client, through the cloud's way in), and
otherwise fails naming the members that did not. Against real etcd (Debian's etcd-server) on
loopback, each member run exactly as its rendered master config defines it."""

import contextlib
import threading
import time

import pytest

from k8simg.clouds.base import Reach
from k8simg.model.plan import peer_url
from k8simg.ops.deploy import ControlPlaneUnhealthy, Deployment
from tests.conftest import write_cluster
from tests.ops.upgrade.cloud_double import CloudDouble
from tests.ops.upgrade.test_etcd_roll import NET, Members
from tests.support import etcd_available, processes

pytestmark = pytest.mark.skipif(not etcd_available(), reason="etcd-server/etcd-client missing")


class OnLoopback(CloudDouble):
    """The nodes' addresses are loopback ones: this machine reaches them directly."""

    @contextlib.contextmanager
    def reach(self):
        yield Reach()


def test_deploy_waits_for_every_member_and_names_one_that_never_answers(tmp_path):
    cd = write_cluster(tmp_path / "gate", topology="ha",
                       workers={"count": 0, "flavor": "x", "volume_size_gb": 10},
                       bastion={"enabled": False}, network=NET)
    said: list[str] = []
    with processes() as start:
        members = Members(cd, start, tmp_path)
        masters = [members.nodes[f"gate-master-{i}"] for i in range(3)]
        first = [(n.name, peer_url(n)) for n in masters]
        for n in masters[:2]:
            members.start(n, first, joining=False)  # quorum; the third never boots
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
        assert f"k8simg etcd health {cd.path} --wait 600" in str(e.value)
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

        # No wait asked for (the library's default, `deploy --no-wait`): nothing is asked.
        said.clear()
        Deployment(cd, cloud).wait_healthy()
        assert said == []
