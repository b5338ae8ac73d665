"""The test cloud's RPC patch (``plugins/k8simg_testcloud/rpc.py``) run against the real
oslo.messaging of the cloud's virtualenv, in a process of that virtualenv with the working
tree's plugin first on the path: installed before the driver's import it patches it there; a
reply waiting is handed over; a reply that never comes times out as upstream's does; another
oslo.messaging than the one its copy of ``ReplyWaiters.get`` came from is refused. The services
themselves load it in every tier that starts the test cloud. That test is marked ``cloud``: it
needs the cloud's virtualenv, which scripts/test sets up beside the tests that do not."""

import os
import subprocess
from pathlib import Path

import pytest

from tests.cloud.testcloud import CloudError, default_venv, rpc_interval_checked

PLUGINS = Path(__file__).resolve().parent / "plugins"

SCRIPT = """
import importlib, importlib.metadata
import k8simg_testcloud.rpc  # before the driver, as the services do
import oslo_messaging
from oslo_messaging._drivers import amqpdriver

print("patched-by", amqpdriver.ReplyWaiters.get.__module__)
waiters = amqpdriver.ReplyWaiters()
waiters.add("m1")
waiters.put("m1", {"result": 7})
print("reply", waiters.get("m1", 5)["result"])
try:
    waiters.get("m1", 0.05)
except oslo_messaging.MessagingTimeout as e:
    print("timeout", e)
importlib.metadata.version = lambda name: "99.0.0"
try:
    importlib.reload(amqpdriver)  # found again through the patch's finder
except RuntimeError as e:
    print("refused", e)
"""


@pytest.mark.cloud
def test_the_patch_hands_replies_over_and_refuses_another_oslo_messaging():
    python = default_venv() / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{python} is missing: scripts/setup --cloud makes the test cloud's "
                    "virtualenv")
    env = {**os.environ, "PYTHONPATH": str(PLUGINS)}
    env.pop("K8SIMG_TESTCLOUD_RPC_INTERVAL", None)
    r = subprocess.run([str(python), "-c", SCRIPT], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:3] == ["patched-by k8simg_testcloud.rpc", "reply 7",
                         "timeout Timed out waiting for a reply to message ID m1"], r.stdout
    assert lines[3].startswith("refused k8simg_testcloud.rpc: its copy of "
                               "oslo_messaging._drivers.amqpdriver.ReplyWaiters.get is "
                               "oslo.messaging 17.3.0's, this is 99.0.0"), r.stdout


@pytest.mark.parametrize("value", ["x", "0", "-1", "2"])
def test_a_bad_interval_is_refused_before_anything_starts(monkeypatch, value):
    monkeypatch.setenv("K8SIMG_TESTCLOUD_RPC_INTERVAL", value)
    with pytest.raises(CloudError, match="K8SIMG_TESTCLOUD_RPC_INTERVAL"):
        rpc_interval_checked()


def test_upstreams_interval_is_accepted(monkeypatch):
    monkeypatch.setenv("K8SIMG_TESTCLOUD_RPC_INTERVAL", "0.5")
    rpc_interval_checked()  # raises if refused
