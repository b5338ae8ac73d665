"""The wheel carries every Python package of the source tree and the elements (an editable
install would hide a package left out of pyproject.toml)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, dirs = set(tool["packages"]), tool["package-dir"]
    found = set()
    for package, folder in dirs.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            if "templates" in rel.parts or "__pycache__" in rel.parts:
                continue
            found.add(".".join([package, *rel.parts]))
    assert found - listed == set(), "missing from [tool.setuptools] packages"
    assert dirs["k8simg.elements"] == "elements" and "k8simg.elements" in listed
