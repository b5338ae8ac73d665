import datetime as dt
import itertools
import os
import threading
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from k8simg.model.cluster import ClusterDir, init_cluster
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
    if not _clouds:  # not started in the background (see pytest_collection_finish)
        _clouds.append(_CloudStart(TestCloud(tmp_path_factory.mktemp("cloud") / "run")))
        _clouds[0].start()
    starting = _clouds[0]
    try:
        starting.join()
        if starting.error is not None:
            pytest.fail(f"the OpenStack test cloud did not start: {starting.error!r}")
        yield starting.cloud
    finally:
        starting.cloud.stop()


class _CloudStart(threading.Thread):
    """The test cloud's start (~3 min of database migrations and services), begun when the
    session's tests are collected, so it overlaps the tests that come before the cloud's."""

    def __init__(self, cloud):
        super().__init__(name="k8simg-test-cloud-start", daemon=True)
        self.cloud, self.error = cloud, None

    def run(self):
        try:
            self.cloud.start()
        except BaseException as e:  # handed to the first test that needs the cloud
            self.error = e


_clouds: list[_CloudStart] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """The test cloud stops right after its last test, not at the end of the session: the
    QEMU tests that follow get the whole machine."""
    yield
    if _uses(item, "test_cloud") and (nextitem is None or not _uses(nextitem, "test_cloud")):
        for starting in _clouds:
            starting.join()
            starting.cloud.stop()


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


@pytest.hookimpl(tryfirst=True)  # before -m selects: `-m cloud` / `-m "not cloud"` work
def pytest_collection_modifyitems(config, items):
    """Order: tests that need neither the baked images nor the test cloud, then the test
    cloud's (the cloud starts for the first, stops after the last), then the tests on the
    baked images (QEMU boots get the machine to themselves). The images are baked in the
    background from the start of the session (tests/ops/bake/conftest.py), so their ~20 minutes
    overlap the first two groups instead of adding to them; the re-baked image comes second, so
    the tests on it (the local HA lifecycle) run last, the other boots going on meanwhile."""
    def group(item):
        cloud, image = _uses(item, "test_cloud"), _uses(item, *IMAGE_FIXTURES)
        # Tests on both (the Glance upload of the baked image) end the cloud's group.
        return (1, image) if cloud else (2, _uses(item, "rebaked_image")) if image else (0, 0)

    items.sort(key=group)
    for item in items:
        if _uses(item, "test_cloud"):
            item.add_marker(pytest.mark.cloud)


def _skipped(item) -> bool:
    """Marked to be skipped whatever happens (``skipif`` with a condition already true)."""
    return any(m.name == "skip" or (m.args and m.args[0] is True)
               for m in item.iter_markers() if m.name in ("skip", "skipif"))


def pytest_configure(config):
    """SIGTERM (a cancelled CI job, ``timeout``, scripts/test stopping the cloud's half)
    unwinds the session as Ctrl-C does, so pytest_sessionfinish still stops the test cloud and
    the bakes: a plain SIGTERM ended pytest and left the cloud's services running."""
    import signal

    def terminated(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminated)


def pytest_collection_finish(session):
    config = session.config
    if config.option.collectonly:
        return
    if any(_uses(item, "test_cloud") for item in session.items) and not _clouds \
            and not os.environ.get("K8SIMG_TEST_CLOUD"):
        from tests.cloud.testcloud import TestCloud, available

        if available() is None:  # otherwise the fixture fails the tests, saying why
            base = config._tmp_path_factory.mktemp("cloud")  # pytest's own tmp_path_factory
            _clouds.append(_CloudStart(TestCloud(base / "run")))
            _clouds[0].start()
    if any(_uses(item, *IMAGE_FIXTURES) for item in session.items):
        from tests.ops.bake.conftest import start_bakes

        start_bakes(session.config, rebake=any(_uses(i, "rebaked_image") and not _skipped(i)
                                               for i in session.items))


def pytest_sessionfinish(session):
    from tests.ops.bake.conftest import stop_bakes

    for starting in _clouds:  # a session cut short before the cloud's tests ran
        starting.join()
        starting.cloud.stop()
    stop_bakes()
