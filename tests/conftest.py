import datetime as dt
import itertools
import os
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from k8simg.cluster import ClusterDir, init_cluster
from k8simg.pki.keys import generate_key
from tests.support import kubectl_binary

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """No test may reach a real cloud through the environment."""
    for var in list(os.environ):
        if var.startswith("OS_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", "/nonexistent/clouds.yaml")


@pytest.fixture
def clock():
    return lambda: NOW


@pytest.fixture(scope="session")
def key_pool():
    """A key factory that hands out a few keys per algorithm in turn.

    Reusing keys keeps the RSA-4096 tests fast; the code under test treats keys as opaque.
    Tests that are about distinct keys use :func:`generate_key` instead.
    """
    pools: dict[str, itertools.cycle] = {}

    def factory(algorithm: str):
        if algorithm not in pools:
            pools[algorithm] = itertools.cycle([generate_key(algorithm) for _ in range(3)])
        return next(pools[algorithm])

    return factory


def write_cluster(path: Path, **overrides) -> ClusterDir:
    """A cluster directory from ``k8simg init`` with top-level or dotted overrides applied."""
    return edit_cluster(init_cluster(path), **overrides)


def edit_cluster(cd: ClusterDir, **overrides) -> ClusterDir:
    """Apply top-level or dotted (``a__b``) overrides to the cluster's ``cluster.yaml``."""
    y = YAML()
    doc = y.load(cd.config_path.read_text())
    for dotted, value in overrides.items():
        node = doc
        *parents, last = dotted.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    with cd.config_path.open("w") as f:
        y.dump(doc, f)
    return cd


@pytest.fixture
def make_cluster(tmp_path):
    counter = itertools.count()

    def make(name: str | None = None, **overrides) -> ClusterDir:
        return write_cluster(tmp_path / (name or f"c{next(counter)}"), **overrides)

    return make


@pytest.fixture(scope="session")
def kubectl(pytestconfig) -> Path:
    return kubectl_binary(Path(pytestconfig.cache.mkdir("kubectl-v1.35")))


@pytest.fixture(scope="session")
def test_cloud(tmp_path_factory):
    """The real OpenStack test cloud (tests/cloud), started once per session, stopped at the
    end whatever happened. Its tests are in the slow tier; it is never skipped quietly: when
    it cannot run here the test fails and says why."""
    from tests.cloud.testcloud import TestCloud, available

    if os.environ.get("K8SIMG_TEST_CLOUD"):  # a cloud left running by a developer
        yield TestCloud.attach(Path(os.environ["K8SIMG_TEST_CLOUD"]))
        return
    why = available()
    if why:
        pytest.fail(f"the OpenStack test cloud cannot start: {why}")
    cloud = TestCloud(tmp_path_factory.mktemp("cloud", numbered=True) / "run")
    try:
        cloud.start()
        yield cloud
    finally:
        cloud.stop()


@pytest.fixture
def os_cloud(test_cloud, tmp_path, monkeypatch):
    """clouds.yaml for the test cloud in effect (``k8simg-test``: a project member;
    ``k8simg-test-admin``), as an operator would have it."""
    path = test_cloud.clouds_yaml(tmp_path / "clouds.yaml")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(path))
    return "k8simg-test"


def pytest_collection_modifyitems(config, items):
    """Tests on the OpenStack test cloud run last, so that the cloud (started for the first
    of them, stopped at the end of the session) never shares the machine with QEMU boots."""
    items.sort(key=lambda item: "test_cloud" in getattr(item, "fixturenames", ()))
