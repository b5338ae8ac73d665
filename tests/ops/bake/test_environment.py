"""diskimage-builder, and every element script it runs as root, gets the operator's environment
without credentials: no OS_* (clouds.yaml's cloud, a password in OS_PASSWORD), nothing named
like a secret, no SSH agent. Checked on the bake's own path up to diskimage-builder, with a
stand-in for disk-image-create (named as such) that records the environment it was given."""

import pytest

from k8simg.model.versions import DEFAULT_KUBERNETES_VERSION
from k8simg.ops import bake as bake_module
from k8simg.ops.bake import BakeError, BakeRequest, bake, scrubbed_environ

SECRETS = {"OS_PASSWORD": "hunter2", "OS_CLOUD": "production", "OS_AUTH_URL": "https://x",
           "GITLAB_TOKEN": "glpat-1", "MY_API_SECRET": "s", "REGISTRY_PASSWD": "p",
           "SSH_AUTH_SOCK": "/run/agent.sock", "DEPLOY_PRIVATE_KEY": "-----BEGIN",
           "Os_Token": "mixed-case"}
KEPT = {"HTTP_PROXY": "http://proxy:3128", "NO_PROXY": "localhost", "LANG": "C.UTF-8",
        "DIB_EXTRA_SETTING": "1",
        "DIB_DEV_USER_PASSWORD": "given to the devuser element on purpose"}


def test_scrubbed_environ_drops_secrets_and_keeps_the_rest():
    env = {**SECRETS, **KEPT}
    assert scrubbed_environ(env) == KEPT
    assert env == {**SECRETS, **KEPT}  # the caller's mapping is untouched


def test_diskimage_builder_is_given_no_secret(tmp_path, monkeypatch):
    dump = tmp_path / "env.txt"
    stand_in = tmp_path / "disk-image-create"
    stand_in.write_text(f"#!/bin/sh\n# TEST STAND-IN for diskimage-builder\nenv > {dump}\nexit 3\n")
    stand_in.chmod(0o755)
    monkeypatch.setattr(bake_module, "dib_command", lambda: stand_in)
    for k, v in {**SECRETS, **KEPT}.items():
        monkeypatch.setenv(k, v)
    req = BakeRequest(kubernetes_version=DEFAULT_KUBERNETES_VERSION, output_dir=tmp_path / "out",
                      without_kubernetes=True, image_cache=tmp_path / "cache")
    with pytest.raises(BakeError, match=r"disk-image-create failed \(exit 3\)"):
        bake(req)
    given = dict(line.split("=", 1) for line in dump.read_text().splitlines() if "=" in line)
    assert not set(SECRETS) & set(given)
    assert all(given.get(k) == v for k, v in KEPT.items())
    assert given["DIB_RELEASE"] == "bookworm"  # what the bake itself sets is there
    assert "hunter2" not in dump.read_text()
