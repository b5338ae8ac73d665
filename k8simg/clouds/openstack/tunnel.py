"""The operator's way onto a cluster's private network on OpenStack: one SSH connection to the
cluster's bastion (asyncssh), with a local port forwarded to each private ``address:port``
asked for. Nothing about etcd is exposed publicly; its TLS (the cluster's CA, a client
certificate of its PKI) runs end to end through the tunnel, whose local ends listen on
127.0.0.1 only (etcd's server certificates carry 127.0.0.1, as kubeadm's do).

The bastion's host key is pinned: the cluster's PKI made it and the bastion's Ignition config
installs it, so the first connection is as verified as every later one.
"""

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from k8simg.clouds.base import CloudError
from k8simg.model import ports

BASTION_USER = "k8simg"


class TunnelError(CloudError):
    """The bastion cannot be reached, refuses us, or cannot forward."""


class Tunnel:
    """An SSH connection to ``host`` and the local port forwards made through it.

    :param host_key: the bastion's public host key, ``ssh-ed25519 AAAA…``: any other is refused.
    :param client_keys: private key files to authenticate with; none: the SSH agent
        (``SSH_AUTH_SOCK``) and ``~/.ssh/id_*``, as ``ssh`` would.
    """

    def __init__(self, host: str, *, host_key: str, port: int = ports.SSH, username: str = BASTION_USER,
                 client_keys: Sequence[Path] = (), connect_timeout: float = 30):
        self.host, self.port, self.username = host, port, username
        self.host_key = host_key.strip()
        self.client_keys = [str(k) for k in client_keys]
        self.connect_timeout = connect_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._conn = None
        self._forwards: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> "Tunnel":
        self.open()
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def _run(self, coro, timeout: float):
        try:
            return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)
        except FutureTimeout:
            raise TunnelError(f"the bastion {self.host}:{self.port} did not answer in "
                              f"{timeout:.0f} s") from None

    def open(self) -> None:
        """Connect to the bastion (on a thread of its own), checking its host key.

        :raises TunnelError: when it cannot be reached, its host key is not the pinned one, or it
            refuses the keys.
        """
        import asyncssh

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="k8simg-tunnel",
                                        daemon=True)
        self._thread.start()
        known = asyncssh.import_known_hosts(f"* {self.host_key}\n")
        options = {"username": self.username, "known_hosts": known,
                   "connect_timeout": self.connect_timeout, "keepalive_interval": 15}
        if self.client_keys:
            options.update(client_keys=self.client_keys, agent_path=None)
        async def connect():
            return await asyncssh.connect(self.host, self.port, **options)

        try:
            self._conn = self._run(connect(), self.connect_timeout + 5)
        except asyncssh.HostKeyNotVerifiable as e:
            self.close()
            raise TunnelError(f"the bastion {self.host}:{self.port} is not the cluster's: its "
                              f"host key is not the one in the cluster's PKI ({e.reason})") from None
        except asyncssh.PermissionDenied:
            self.close()
            keys = ", ".join(self.client_keys) or "the SSH agent and ~/.ssh"
            raise TunnelError(f"the bastion {self.host}:{self.port} refused user "
                              f"{self.username} with the keys from {keys}: the bastion takes the "
                              "keys in cluster.yaml's bastion.ssh_authorized_keys") from None
        except (OSError, asyncssh.Error) as e:
            self.close()
            raise TunnelError(f"cannot reach the bastion {self.host}:{self.port}: "
                              f"{getattr(e, 'reason', None) or e}") from None

    def close(self) -> None:
        """Close the connection and every forward; a tunnel not open is no error."""
        if self._loop is None:
            return
        if self._conn is not None:
            conn, self._conn = self._conn, None

            async def shut():
                conn.close()
                await conn.wait_closed()

            try:
                self._run(shut(), 10)
            except TunnelError:
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = self._thread = None
        self._forwards.clear()

    # -- forwards ------------------------------------------------------------------------------
    def forward(self, host: str, port: int) -> int:
        """The local port (on 127.0.0.1) that reaches ``host:port`` through the bastion."""
        if self._conn is None:
            raise TunnelError("the tunnel is not open")
        with self._lock:
            if (host, port) not in self._forwards:
                async def listen():
                    return await self._conn.forward_local_port("127.0.0.1", 0, host, port)

                try:
                    listener = self._run(listen(), 30)
                except OSError as e:
                    raise TunnelError(f"cannot forward to {host}:{port}: {e}") from None
                self._forwards[(host, port)] = listener.get_port()
            return self._forwards[(host, port)]

    def url(self, url: str) -> str:
        """``https://10.0.0.11:2379`` → ``https://127.0.0.1:<its local port>``."""
        parts = urlsplit(url)
        local = self.forward(parts.hostname, parts.port)
        return urlunsplit(parts._replace(netloc=f"127.0.0.1:{local}"))
