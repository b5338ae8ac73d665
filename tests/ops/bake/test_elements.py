"""The elements follow diskimage-builder's conventions, checked by its own dib-lint."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from k8simg.ops.bake import ELEMENTS_DIR, K8SIMG_ELEMENTS

# Environment switches of Debian's own tools an element may set: INITRD=No makes the kernel's
# /etc/kernel/postinst.d hooks skip their initramfs builds.
DEBIAN_SWITCHES = {"INITRD"}


def dib_lint() -> str | None:
    return shutil.which("dib-lint") or shutil.which("dib-lint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(dib_lint() is None, reason="diskimage-builder not installed")
def test_dib_lint_passes(tmp_path):
    r = subprocess.run([dib_lint()], cwd=ELEMENTS_DIR.parent, capture_output=True, text=True,
                       env={**os.environ, "ELEMENTS_DIR": "elements", "LIB_DIR": str(tmp_path)},
                       timeout=120)
    assert r.returncode == 0 and "PASS" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]


def test_dib_lint_is_really_checking(tmp_path):
    """The same run flags a phase script without the DIB_DEBUG_TRACE guard."""
    if dib_lint() is None:
        pytest.skip("diskimage-builder not installed")
    el = tmp_path / "elements" / "broken" / "install.d"
    el.mkdir(parents=True)
    (tmp_path / "elements" / "broken" / "README.rst").write_text("broken\n======\n")
    script = el / "10-broken"
    script.write_text("#!/bin/bash\necho hi\n")
    script.chmod(0o755)
    r = subprocess.run([dib_lint()], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "ELEMENTS_DIR": "elements", "LIB_DIR": str(tmp_path)})
    assert r.returncode != 0 and "does not follow DIB_DEBUG_TRACE" in r.stdout


@pytest.mark.parametrize("element", K8SIMG_ELEMENTS)
def test_element_conventions(element):
    root = ELEMENTS_DIR / element
    readme = (root / "README.rst").read_text()
    deps = (root / "element-deps").read_text().split()
    assert deps == sorted(deps)
    for env in (root / "environment.d").iterdir():
        assert not os.access(env, os.X_OK), f"{env} must not be executable"
        for var in re.findall(r"export (\w+)=", env.read_text()):
            # an element's own settings are DIB_*; a switch of Debian's own tools it sets
            # (documented all the same) is named here
            assert (var.startswith("DIB_") or var in DEBIAN_SWITCHES) and var in readme, var
    for phase in ("extra-data.d", "install.d", "post-install.d", "finalise.d"):
        for script in (root / phase).glob("*") if (root / phase).exists() else []:
            assert re.match(r"[1-9]0-|[1-9][0-9]-", script.name), script
            assert os.access(script, os.X_OK)
            assert "set -x" not in script.read_text().split("fi\n", 1)[-1]


TEST_ELEMENTS = sorted(ELEMENTS_DIR.glob("*/test-elements/*"))


@pytest.mark.parametrize("element", K8SIMG_ELEMENTS)
def test_every_element_has_a_test_element(element):
    assert [t for t in TEST_ELEMENTS if t.parent.parent.name == element]


@pytest.mark.parametrize("case", TEST_ELEMENTS, ids=lambda p: p.name)
def test_test_elements_check_their_element(case):
    """Each case depends on the element it tests and holds an executable check that fails
    the build (the slow tier bakes with every case, see tests/ops/bake/testimage.py)."""
    assert case.parent.parent.name in (case / "element-deps").read_text().split()
    assert (case / "README.rst").read_text().startswith("=" * len(case.name))
    checks = [s for phase in ("post-install.d", "finalise.d") for s in (case / phase).glob("*")]
    assert checks and all(os.access(s, os.X_OK) and "exit 1" in s.read_text() for s in checks)
