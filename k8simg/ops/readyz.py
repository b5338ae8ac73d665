"""The API server's readiness as deploy's last gate: ``GET /readyz?verbose`` through the API's
load balancer, with the cluster-admin client certificate, until it answers 200.

Each ask runs this module as a child process (``python -m k8simg.ops.readyz URL CA CRT KEY``),
so that the local cloud can run it inside the cluster's network namespace (the API's address
is only routed there), as every other look at the nodes is run.
"""

import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from k8simg.errors import K8simgError

ASK_TIMEOUT_S = 10


class ApiNotReady(K8simgError):
    """The API server did not answer ready in time."""

    def __init__(self, url: str, timeout: float, last: str):
        self.last = last
        super().__init__(f"the API server at {url} is not ready after {timeout:.0f} s of "
                         f"asking; its last answer to /readyz:\n"
                         + "\n".join(f"  {ln}" for ln in last.splitlines()[-12:]))


def ask(url: str, ca: Path, crt: Path, key: Path, *,
        wrap: Callable[[list[str]], list[str]] = lambda argv: argv) -> tuple[int | None, str]:
    """One ``GET <url>/readyz?verbose``: ``(HTTP status, body)``, or ``(None, why)`` when it
    did not answer."""
    argv = wrap([sys.executable, "-m", "k8simg.ops.readyz", url, str(ca), str(crt), str(key)])
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=ASK_TIMEOUT_S + 20)
    except subprocess.TimeoutExpired:
        return None, "no answer"
    head, _, body = r.stdout.partition("\n")
    if r.returncode != 0 or not head.isdigit():
        return None, (r.stderr.strip() or r.stdout.strip() or f"exit {r.returncode}")[-500:]
    return int(head), body


def wait_ready(url: str, ca: Path, crt: Path, key: Path, *, timeout: float,
               progress: Callable[[str], None],
               wrap: Callable[[list[str]], list[str]] = lambda argv: argv,
               poll: float = 5) -> float:
    """Ask until the API server answers 200; the seconds it took.

    :raises ApiNotReady: with its last answer, when it does not within ``timeout``.
    """
    started = time.monotonic()
    said = None
    while True:
        status, body = ask(url, ca, crt, key, wrap=wrap)
        if status == 200:
            return time.monotonic() - started
        last = f"{status if status is not None else 'no answer'}: {body.strip()}"
        failing = [ln for ln in body.splitlines() if ln.startswith("[-]")]
        now = f"{status}: " + (", ".join(failing) if failing else body.strip()[:200])
        if now != said:
            progress(f"API server: not ready yet ({now}); waiting")
            said = now
        if time.monotonic() - started >= timeout:
            raise ApiNotReady(url, timeout, last)
        time.sleep(poll)


def main(argv: list[str]) -> int:
    url, ca, crt, key = argv
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(crt, key)
    try:
        with urllib.request.urlopen(f"{url}/readyz?verbose", context=ctx,
                                    timeout=ASK_TIMEOUT_S) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:  # 500/503: not ready, with the checks that fail
        status, body = e.code, e.read()
    except (OSError, ssl.SSLError) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(status)
    print(body.decode(errors="replace"), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
