"""``python -m k8simg_testcloud.run NAME ARGS...``: the console script ``NAME`` of the cloud's
virtualenv (``nova-conductor``, ``cinder-volume`` ...) with :mod:`k8simg_testcloud.rpc`
installed first, and ``NAME`` as ``sys.argv[0]``, as when it runs as itself."""

import sys
from importlib.metadata import entry_points

# At the top, not in main(): a worker started by multiprocessing's spawn runs only this.
import k8simg_testcloud.rpc  # noqa: F401 - installs the patch (stdlib imports only)


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m k8simg_testcloud.run CONSOLE_SCRIPT [ARGS...]")
    name = sys.argv[1]
    found = entry_points(group="console_scripts", name=name)
    if not found:
        sys.exit(f"k8simg_testcloud.run: no console script {name!r} in this virtualenv")
    sys.argv = [name, *sys.argv[2:]]
    sys.exit(next(iter(found)).load()())


if __name__ == "__main__":
    main()
