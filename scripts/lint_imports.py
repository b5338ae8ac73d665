#!/usr/bin/env python3
"""``lint-imports`` (import-linter, contracts in pyproject.toml) over k8simg as it installs.

pki/ and ignition/ install as ``k8simg.pki`` and ``k8simg.ignition`` (package-dir mapping),
which import-linter cannot see in the source tree: it walks the root package's folder. So the
Python files are laid out as the wheel lays them out, in a temporary folder, and checked there.

    python scripts/lint_imports.py            # exit 0 when every contract is kept
    python scripts/lint_imports.py --stage D  # only lay the tree out in D (tests use it)
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# package -> source folder, as [tool.setuptools] package-dir maps them
LAYOUT = {"k8simg": ROOT / "k8simg", "k8simg/pki": ROOT / "pki",
          "k8simg/ignition": ROOT / "ignition"}


def stage(dest: Path) -> Path:
    """Copy every module of k8simg to ``dest`` as the wheel lays them out; returns ``dest``."""
    for package, source in LAYOUT.items():
        for src in source.rglob("*.py"):
            if "__pycache__" in src.parts:
                continue
            target = dest / package / src.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
    return dest


def lint(tree: Path) -> subprocess.CompletedProcess:
    """import-linter over the staged ``tree`` with the project's contracts."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    return subprocess.run([exe, str(ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                          capture_output=True, text=True)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--stage"] and len(argv) == 2:
        stage(Path(argv[1]))
        return 0
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="k8simg-lint-imports.") as tmp:
        r = lint(stage(Path(tmp)))
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    return r.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
