"""The import-linter contracts in pyproject.toml hold for the code as it installs, and each one
fails when a module makes the import it forbids (run on a staged copy of the package, see
scripts/lint_imports.py)."""

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "lint_imports.py"
_spec = importlib.util.spec_from_file_location("lint_imports", SCRIPT)
lint_imports = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lint_imports)

pytestmark = pytest.mark.skipif(
    not shutil.which("lint-imports", path=str(Path(sys.executable).parent)),
    reason="import-linter not installed (the lint extra)")


def test_every_contract_is_kept(tmp_path):
    r = lint_imports.lint(lint_imports.stage(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 kept, 0 broken" in r.stdout


@pytest.mark.parametrize("module,line,contract", [
    # a lower layer reaching up
    ("k8simg/model/plan.py", "import k8simg.ops.deploy",
     "layers: cli -> ops -> clouds -> ignition -> pki -> model"),
    ("k8simg/pki/certs.py", "import k8simg.ignition.render",
     "layers: cli -> ops -> clouds -> ignition -> pki -> model"),
    # one driver importing the other
    ("k8simg/clouds/local/vm.py", "import k8simg.clouds.openstack.connect",
     "the OpenStack and local drivers never import each other"),
    # a driver imported past the factory
    ("k8simg/ops/upgrade.py", "import k8simg.clouds.local.driver",
     "only the factory (k8simg.clouds) imports a cloud driver"),
    # a cycle between siblings (inside a function counts too)
    ("k8simg/ops/drain.py", "def _f():\n    import k8simg.ops.lifecycle",
     "no import cycles among the modules of any package"),
])
def test_a_forbidden_import_breaks_its_contract(tmp_path, module, line, contract):
    tree = lint_imports.stage(tmp_path)
    target = tree / module
    target.write_text(target.read_text() + "\n" + line + "\n")
    r = lint_imports.lint(tree)
    assert r.returncode != 0
    assert f"{contract}" in r.stdout and "BROKEN" in r.stdout.split(contract, 1)[1].split("\n")[0]
