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
    _clouds.append(cloud)
    try:
        cloud.start()
        yield cloud
    finally:
        cloud.stop()


_clouds: list = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """The test cloud stops right after its last test, not at the end of the session: the
    QEMU tests that follow get the whole machine."""
    yield
    if _uses(item, "test_cloud") and (nextitem is None or not _uses(nextitem, "test_cloud")):
        for cloud in _clouds:
            cloud.stop()


@pytest.fixture
def os_cloud(test_cloud, tmp_path, monkeypatch):
    """clouds.yaml for the test cloud in effect (``k8simg-test``: a project member;
    ``k8simg-test-admin``), as an operator would have it."""
    path = test_cloud.clouds_yaml(tmp_path / "clouds.yaml")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(path))
    return "k8simg-test"


IMAGE_FIXTURES = ("baked_image", "rebaked_image")


def _uses(item, *fixtures) -> bool:
    return any(f in getattr(item, "fixturenames", ()) for f in fixtures)


def pytest_collection_modifyitems(config, items):
    """Order: tests that need neither the baked images nor the test cloud, then the test
    cloud's (the cloud starts for the first, stops after the last), then the tests on the
    baked images (QEMU boots get the machine to themselves). The images are baked in the
    background from the start of the session (tests/bake/conftest.py), so their ~20 minutes
    overlap the first two groups instead of adding to them."""
    def group(item):
        cloud, image = _uses(item, "test_cloud"), _uses(item, *IMAGE_FIXTURES)
        # Tests on both (the Glance upload of the baked image) end the cloud's group.
        return (1, image) if cloud else (2, 0) if image else (0, 0)

    items.sort(key=group)


def pytest_collection_finish(session):
    if any(_uses(item, *IMAGE_FIXTURES) for item in session.items):
        from tests.bake.conftest import start_bakes

        start_bakes(session.config, rebake=any(_uses(i, "rebaked_image") for i in session.items))


def pytest_sessionfinish(session):
    from tests.bake.conftest import stop_bakes

    stop_bakes()
