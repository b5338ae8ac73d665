"""The test cloud's services look for an RPC call's reply every 5 ms, not every 0.5 s.

oslo.messaging's rabbit driver hands a reply from its listener thread to the waiting caller
through a queue that the caller looks at, sleeping 0.5 s between looks
(``ReplyWaiters.get``: a blocking get deadlocks under eventlet, Launchpad bug 2035113). So
every RPC call costs about 0.5 s however fast its answer, and a server's build makes about
fifteen in a row (nova-compute asking nova-conductor, Cinder's API asking cinder-volume):
nova-compute said 9-14 s "to build instance" on fake computes that do nothing. Polled every
5 ms, the same calls take what they take (builds of 1-3 s); nothing else about the services
changes. ``benchmarks/bench_upgrade.py --cloud test-cloud``, an HA cluster's roll: 134.8 s
with upstream's 0.5 s, 52.7 s with this.

:func:`install` patches the driver when a service imports it, after eventlet's monkey
patching (importing oslo.messaging any earlier would break nova's). With another
oslo.messaging than the one ``get`` was copied from, the service fails to start, saying so.
"""

import importlib.abc
import importlib.machinery
import importlib.metadata
import os
import sys

MODULE = "oslo_messaging._drivers.amqpdriver"
UPSTREAM = "17.3.0"  # tests/cloud/requirements.lock: ``get`` below is a copy of this one's
UPSTREAM_SLEEP = 0.5
# upstream's timing back: K8SIMG_TESTCLOUD_RPC_INTERVAL=0.5 in the environment of whatever
# starts the test cloud (e.g. benchmarks/bench_upgrade.py); testcloud.py checks the value
INTERVAL = float(os.environ.get("K8SIMG_TESTCLOUD_RPC_INTERVAL", "0.005"))


def patch(amqpdriver) -> None:
    """``ReplyWaiters.get`` as oslo.messaging 17.3.0's, its sleep shortened."""
    waiters = amqpdriver.ReplyWaiters
    if waiters.get.__module__ == __name__:
        return
    found = importlib.metadata.version("oslo.messaging")
    if found != UPSTREAM or UPSTREAM_SLEEP not in waiters.get.__code__.co_consts:
        raise RuntimeError(f"k8simg_testcloud.rpc: its copy of {MODULE}.ReplyWaiters.get is "
                           f"oslo.messaging {UPSTREAM}'s, this is {found}: review the patch")

    def get(self, msg_id, timeout):
        watch = amqpdriver.timeutils.StopWatch(duration=timeout)
        watch.start()
        while not watch.expired():
            try:
                return self._queues[msg_id].get(block=False)
            except amqpdriver.queue.Empty:
                amqpdriver.time.sleep(INTERVAL)
        raise amqpdriver.oslo_messaging.MessagingTimeout(
            f"Timed out waiting for a reply to message ID {msg_id}")

    waiters.get = get


class _Finder(importlib.abc.MetaPathFinder):
    """Stays in ``sys.meta_path`` (taking itself out could make another thread's import skip
    a finder) and finds the module as the path finder does, without asking the others."""

    def find_spec(self, name, path, target=None):
        if name != MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or spec.loader is None:
            return None  # the next finders say what is missing
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


def install() -> None:
    """Patch the driver when it is imported (now, if it already is)."""
    if MODULE in sys.modules:
        patch(sys.modules[MODULE])
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


install()
