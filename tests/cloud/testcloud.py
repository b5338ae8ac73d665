"""A real OpenStack control plane on loopback: the upstream services from PyPI (2026.1
"Gazpacho", pinned in tests/cloud/requirements.lock) with no hypervisor and no agents.

- Keystone (password auth, fernet tokens) and Glance with the file store.
- Placement; Nova with Nova's fake compute driver and four nova-compute processes with their
  own host names and state paths, so that anti-affinity has hosts to spread over. The driver
  (``plugins/k8simg_testcloud/nova.py``) gives each server a console log: a first boot ending
  at its login prompt, or what a test scripted (:meth:`TestCloud.script_console`).
- Neutron ML2 with no agents, binding every port through the test cloud's own mechanism driver
  (``plugins/k8simg_testcloud/ml2.py``); a flat external network ``public``.
- Cinder with upstream's fake logging driver (image copy and clone made no-ops).
- Octavia with the amphora provider and its noop amphora, compute and network drivers, with a
  CA generated for the run.
- Swift: one proxy (Keystone auth, temporary URLs, static large objects) and an account, container and object
  server on one device with single-replica rings.
- Every service looks for its RPC calls' replies every 5 ms instead of oslo.messaging's 0.5 s
  (``plugins/k8simg_testcloud/rpc.py``): a server's build made about fifteen calls in a row.
- MariaDB (unix socket only) and RabbitMQ (127.0.0.1 only, epmd and distribution included):
  SQLite does not survive Keystone's concurrent requests. APIs run under pyuwsgi with
  ``--http-socket``; every response carries ``Connection: close``, which keystoneauth's
  keep-alive pool needs there.

Everything lives under one directory and every process is started in its own session and
recorded (``pids``), so :meth:`TestCloud.stop` leaves nothing behind. FakeDriver computes refuse
to start against a database that already knows them, so every run starts from empty data.
"""

import configparser
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import free_ports

HERE = Path(__file__).resolve().parent
REGION = "RegionOne"
SERVICE_NICENESS = 5  # see start_process
SERVICES = ("keystone", "glance", "placement", "nova", "neutron", "cinder", "octavia")
SWIFT_SERVERS = ("swift-account", "swift-container", "swift-object")  # and the proxy, "swift"
DATABASES = ("keystone", "glance", "placement", "nova_api", "nova", "nova_cell0", "neutron",
             "cinder", "octavia")
# Four: a rolling upgrade surges a fourth master into the hard anti-affinity group.
COMPUTES = ("compute-1", "compute-2", "compute-3", "compute-4")
PROJECT, USER = "k8simg", "k8simg"  # what the tests deploy as: a member of one project
MEMBER_ONLY = "k8simg-member"  # holds only `member` on PROJECT
FLAVORS = {"k8s.small": (2, 4096, 20), "k8s.medium": (4, 8192, 40), "k8s.tiny": (1, 1024, 10)}
EXTERNAL_NETWORK, EXTERNAL_CIDR = "public", "172.24.4.0/24"


class CloudError(RuntimeError):
    pass


def default_venv() -> Path:
    return Path(os.environ.get("K8SIMG_CLOUD_VENV", HERE.parents[1] / ".venv-cloud"))


def available(venv: Path | None = None) -> str | None:
    """Why the test cloud cannot run here, or None when it can."""
    venv = venv or default_venv()
    if not (venv / "bin" / "nova-compute").exists():
        return f"the test cloud's virtualenv {venv} is missing (scripts/setup --cloud makes it)"
    for tool in ("mariadbd", "mariadb-install-db"):
        if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin"):
            return f"{tool} is missing (Debian's mariadb-server)"
    if not Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists():
        return "rabbitmq-server is missing (Debian's rabbitmq-server)"
    return None


@dataclass
class TestCloud:
    root: Path
    venv: Path = field(default_factory=default_venv)
    ports: dict[str, int] = field(default_factory=dict)
    # Never starting with "-": keystone-manage would take it for an option (seen: 1 run in 64).
    password: str = field(default_factory=lambda: "k8s" + secrets.token_urlsafe(18))
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    attached: bool = False  # not started by this process: never stopped by it either
    stopped: bool = False  # stop() twice must not signal process groups whose IDs were reused

    # ------------------------------------------------------------------ paths and basics
    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def logs(self) -> Path:
        return self.root / "log"

    @property
    def db_socket(self) -> Path:
        return self.root / "db" / "mysqld.sock"

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    @property
    def auth_url(self) -> str:
        return self.url("keystone") + "/v3"

    def db_url(self, name: str) -> str:
        return f"mysql+pymysql://root@localhost/{name}?unix_socket={self.db_socket}&charset=utf8"

    @property
    def transport_url(self) -> str:
        return f"rabbit://guest:guest@127.0.0.1:{self.ports['rabbit']}/"

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    # ------------------------------------------------------------------ processes
    def _env(self, **extra) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        env.update(PATH=f"{self.venv / 'bin'}:{env.get('PATH', '')}:/usr/sbin",
                   PYTHONUNBUFFERED="1", **extra)
        return env

    def start_process(self, name: str, args: list[str], env: dict | None = None) -> None:
        log = open(self.logs / f"{name}.log", "ab")
        # The services yield the CPU (nice 5): the test run boots QEMU guests beside them under
        # software emulation, and a starved guest's systemd gives up on its devices after 90 s
        # (seen in CI: the storage volume "timed out", containerd never started). The cloud's
        # own waits are minutes long; with a lower weight the scheduler also leaves a lone
        # guest its own core. `nice` execs the service: the PID recorded is the service's.
        p = subprocess.Popen(["nice", "-n", str(SERVICE_NICENESS), *args], stdout=log,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env or self._env(), cwd=self.root, start_new_session=True)
        log.close()
        self.procs[name] = p
        with open(self.root / "pids", "a") as f:
            f.write(f"{p.pid} {name}\n")

    def run(self, name: str, args: list[str], env: dict | None = None, timeout: float = 600,
            ) -> str:
        with open(self.logs / f"{name}.log", "ab") as log:
            p = subprocess.run(args, env=env or self._env(), cwd=self.root, timeout=timeout,
                               stdout=subprocess.PIPE, stderr=log)
        if p.returncode != 0:
            raise CloudError(f"{' '.join(args[:3])} failed (exit {p.returncode}); see "
                             f"{self.logs / name}.log:\n{self.tail(name)}")
        return p.stdout.decode()

    def tail(self, name: str, lines: int = 30) -> str:
        try:
            return "".join((self.logs / f"{name}.log").read_text(errors="replace")
                           .splitlines(True)[-lines:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise CloudError(f"{name} exited with {p.returncode}:\n{self.tail(name)}")

    def wait(self, what: str, predicate, timeout: float = 120, interval: float = 0.5):
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                result = predicate()
                if result:
                    return result
            except Exception as e:  # reported on timeout
                last = e
            time.sleep(interval)
        raise CloudError(f"timed out after {timeout:.0f} s waiting for {what}"
                         + (f": {last}" if last else ""))

    def stop(self) -> None:
        """Stop every process this cloud started (recorded in ``pids``), the whole group."""
        if self.attached or self.stopped:
            return
        self.stopped = True
        pids = []
        if (self.root / "pids").exists():
            pids = [int(ln.split()[0]) for ln in (self.root / "pids").read_text().splitlines()]
        for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            alive = []
            for pid in pids:
                try:
                    os.killpg(pid, sig)
                    alive.append(pid)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.monotonic() + grace
            while alive and time.monotonic() < deadline:
                for p in self.procs.values():
                    p.poll()
                alive = [pid for pid in alive if _group_alive(pid)]
                time.sleep(0.2)
            if not alive:
                break
        for p in self.procs.values():
            try:
                p.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()

    # ------------------------------------------------------------------ configuration
    def write_conf(self, project: str, name: str, sections: dict[str, dict]) -> Path:
        cp = configparser.RawConfigParser()
        cp.optionxform = str
        for section, values in sections.items():
            if section != "DEFAULT":
                cp.add_section(section)
            for k, v in values.items():
                cp.set(section, k, str(v))
        path = self.etc / project / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            cp.write(f)
        path.chmod(0o600)
        return path

    def authtoken(self, user: str) -> dict:
        return {"www_authenticate_uri": self.auth_url, "auth_url": self.auth_url,
                "auth_type": "password", "project_domain_name": "Default",
                "user_domain_name": "Default", "project_name": "service", "username": user,
                "password": self.password, "region_name": REGION,
                "service_token_roles_required": "true"}

    def common(self, project: str) -> dict:
        return {"transport_url": self.transport_url, "log_dir": str(self.logs),
                "state_path": str(self.root / "state" / project), "debug": "false"}

    def configure(self) -> None:
        venv_etc = self.venv / "etc"
        lock = {"lock_path": str(self.root / "lock")}
        self.write_conf("keystone", "keystone.conf", {
            "DEFAULT": {"log_dir": str(self.logs)},
            "database": {"connection": self.db_url("keystone")},
            "token": {"provider": "fernet", "expiration": 14400},
            # bcrypt's least cost: each password or application credential checked cost 0.27 s
            # of CPU at upstream's 12 rounds (about 200 token requests in the cloud's tier)
            "identity": {"password_hash_rounds": 4},
            "fernet_tokens": {"key_repository": str(self.etc / "keystone" / "fernet-keys")},
            "credential": {"key_repository": str(self.etc / "keystone" / "credential-keys")},
            "oslo_policy": {"enforce_new_defaults": "true", "enforce_scope": "false"}})
        self.write_conf("glance", "glance-api.conf", {
            "DEFAULT": {**self.common("glance"), "enabled_backends": "file:file"},
            "database": {"connection": self.db_url("glance")},
            "glance_store": {"default_backend": "file"},
            "file": {"filesystem_store_datadir": str(self.root / "state" / "glance" / "images")},
            "keystone_authtoken": self.authtoken("glance"),
            "paste_deploy": {"flavor": "keystone"},
            "oslo_concurrency": lock})
        shutil.copy(venv_etc / "glance" / "glance-api-paste.ini", self.etc / "glance")
        self.write_conf("placement", "placement.conf", {
            "DEFAULT": {"log_dir": str(self.logs)},
            "placement_database": {"connection": self.db_url("placement")},
            "api": {"auth_strategy": "keystone"},
            "keystone_authtoken": self.authtoken("placement")})
        service = {k: v for k, v in self.authtoken("nova").items()
                   if k not in ("www_authenticate_uri", "service_token_roles_required")}
        self.write_conf("nova", "nova.conf", {
            "DEFAULT": {**self.common("nova"), "compute_driver": "k8simg_scripted.ScriptedConsoleDriver",
                        "my_ip": "127.0.0.1", "enabled_apis": "osapi_compute",
                        "vif_plugging_is_fatal": "false", "vif_plugging_timeout": 0,
                        "instances_path": str(self.root / "state" / "nova" / "instances")},
            "api": {"auth_strategy": "keystone"},
            "api_database": {"connection": self.db_url("nova_api")},
            "database": {"connection": self.db_url("nova")},
            "keystone_authtoken": self.authtoken("nova"),
            "service_user": {**service, "send_service_user_token": "true"},
            "placement": service,
            "neutron": {**service, "username": "neutron", "service_metadata_proxy": "false"},
            "cinder": {**{k: v for k, v in service.items() if k != "region_name"},
                       "os_region_name": REGION, "username": "cinder"},
            "glance": {"region_name": REGION},
            # one worker each (upstream: one per CPU); hosts are discovered by nova-manage
            # until all are mapped (seed), not by the scheduler every 2 s
            "scheduler": {"workers": 1},
            "conductor": {"workers": 1},
            "wsgi": {"api_paste_config": str(venv_etc / "nova" / "api-paste.ini")},
            "oslo_concurrency": lock,
            "oslo_messaging_notifications": {"driver": "noop"}})
        # nova's WSGI entry point takes the first of its files as the paste config
        shutil.copy(venv_etc / "nova" / "api-paste.ini", self.etc / "nova")
        for host in COMPUTES:
            self.write_conf("nova", f"{host}.conf", {"DEFAULT": {
                "host": host, "log_file": f"{host}.log",  # not one file for the four
                "state_path": str(self.root / "state" / host),
                "instances_path": str(self.root / "state" / host / "instances")}})
        self.write_conf("neutron", "neutron.conf", {
            "DEFAULT": {**self.common("neutron"), "core_plugin": "ml2",
                        "service_plugins": "router", "auth_strategy": "keystone",
                        "notify_nova_on_port_status_changes": "false",
                        "notify_nova_on_port_data_changes": "false",
                        "api_paste_config": str(venv_etc / "neutron" / "api-paste.ini"),
                        "allow_overlapping_ips": "true"},
            "database": {"connection": self.db_url("neutron")},
            "keystone_authtoken": self.authtoken("neutron"),
            "nova": {**service, "username": "nova"},
            "oslo_concurrency": lock,
            "oslo_messaging_notifications": {"driver": "noop"}})
        self.write_conf("neutron", "ml2_conf.ini", {
            "ml2": {"type_drivers": "flat,vxlan", "tenant_network_types": "vxlan",
                    "mechanism_drivers": "k8simg_bind_all", "extension_drivers": "port_security"},
            "ml2_type_flat": {"flat_networks": "public"},
            "ml2_type_vxlan": {"vni_ranges": "1:1000"},
            "securitygroup": {"enable_security_group": "true", "firewall_driver": "noop"}})
        self.write_conf("cinder", "cinder.conf", {
            "DEFAULT": {**self.common("cinder"), "auth_strategy": "keystone",
                        "enabled_backends": "fake", "my_ip": "127.0.0.1",
                        "api_paste_config": str(venv_etc / "cinder" / "api-paste.ini"),
                        "default_volume_type": "__DEFAULT__"},
            "fake": {"volume_driver": "k8simg_testcloud.cinder.FakeVolumeDriver",
                     "volume_backend_name": "fake"},
            "database": {"connection": self.db_url("cinder")},
            "keystone_authtoken": self.authtoken("cinder"),
            "nova": {**service, "username": "nova"},
            "oslo_concurrency": lock,
            "oslo_messaging_notifications": {"driver": "noop"}})
        pki = self.octavia_pki()
        self.write_conf("octavia", "octavia.conf", {
            "DEFAULT": {"transport_url": self.transport_url, "log_dir": str(self.logs)},
            "api_settings": {"auth_strategy": "keystone", "default_provider_driver": "amphora",
                             "enabled_provider_drivers": "amphora:The Octavia Amphora driver."},
            "database": {"connection": self.db_url("octavia")},
            "keystone_authtoken": self.authtoken("octavia"),
            "service_auth": {k: v for k, v in self.authtoken("octavia").items()
                             if k not in ("www_authenticate_uri", "service_token_roles_required",
                                          "region_name")},
            "controller_worker": {"amphora_driver": "amphora_noop_driver",
                                  "compute_driver": "compute_noop_driver",
                                  "network_driver": "network_noop_driver",
                                  "loadbalancer_topology": "SINGLE",
                                  "amp_image_tag": "amphora", "amp_flavor_id": "none",
                                  "amp_boot_network_list": "none",
                                  "client_ca": pki["ca.crt"]},
            "certificates": {"cert_generator": "local_cert_generator",
                             "ca_certificate": pki["ca.crt"], "ca_private_key": pki["ca.key"],
                             "server_certs_key_passphrase": secrets.token_hex(16)},
            "haproxy_amphora": {"client_cert": pki["client.pem"], "server_ca": pki["ca.crt"]},
            "health_manager": {"heartbeat_key": secrets.token_hex(8),
                               "bind_ip": "127.0.0.1", "bind_port": self.ports["octavia-hm"]},
            "task_flow": {"jobboard_enabled": "false"},
            "oslo_messaging": {"topic": "octavia_prov"},
            "oslo_policy": {"enforce_new_defaults": "true", "enforce_scope": "false"},
            "oslo_concurrency": lock})
        self.configure_swift()

    def configure_swift(self) -> None:
        """Swift as one node keeps it: a single replica of every ring on one device (a folder
        of the run's; xattrs of the machine's filesystem), the account, container and object
        servers and a proxy authenticating through Keystone, with temporary URLs. Every server
        reads its swift.conf from here (``swift_dir``), not from /etc/swift."""
        swift_dir = self.etc / "swift"
        devices = self.root / "state" / "swift"
        (devices / "d1").mkdir(parents=True, exist_ok=True)
        swift_dir.mkdir(parents=True, exist_ok=True)
        self.write_conf("swift", "swift.conf", {
            "swift-hash": {"swift_hash_path_suffix": secrets.token_hex(8),
                           "swift_hash_path_prefix": secrets.token_hex(8)},
            "storage-policy:0": {"name": "Policy-0", "default": "yes"}})
        builder = self.bin("swift-ring-builder")
        for ring in SWIFT_SERVERS:
            kind = ring.removeprefix("swift-")
            f = str(swift_dir / f"{kind}.builder")
            self.run("swift-ring-builder", [builder, f, "create", "6", "1", "1"])
            self.run("swift-ring-builder", [
                builder, f, "add", f"r1z1-127.0.0.1:{self.ports[ring]}/d1", "100"])
            # "rebalance" exits 1 when it warns (one device: nothing to balance)
            subprocess.run([builder, f, "rebalance"], capture_output=True, cwd=self.root,
                           env=self._env())
            if not (swift_dir / f"{kind}.ring.gz").is_file():
                raise CloudError(f"swift-ring-builder made no {kind} ring")
        common = {"bind_ip": "127.0.0.1", "workers": "0", "swift_dir": str(swift_dir),
                  "devices": str(devices), "mount_check": "false"}
        for ring in SWIFT_SERVERS:
            kind = ring.removeprefix("swift-")
            self.write_conf("swift", f"{kind}-server.conf", {
                "DEFAULT": {**common, "bind_port": self.ports[ring]},
                "pipeline:main": {"pipeline": f"{kind}-server"},
                f"app:{kind}-server": {"use": f"egg:swift#{kind}"}})
        filters = ("catch_errors", "gatekeeper", "healthcheck", "proxy-logging",
                   "listing_formats", "tempurl", "copy", "slo", "dlo", "versioned_writes")
        self.write_conf("swift", "proxy-server.conf", {
            "DEFAULT": {"bind_ip": "127.0.0.1", "bind_port": self.ports["swift"],
                        "workers": "0", "swift_dir": str(swift_dir)},
            "pipeline:main": {"pipeline": "catch_errors gatekeeper healthcheck proxy-logging "
                              "listing_formats tempurl authtoken keystoneauth copy slo "
                              "dlo versioned_writes proxy-logging proxy-server"},
            "app:proxy-server": {"use": "egg:swift#proxy", "account_autocreate": "true"},
            **{f"filter:{f}": {"use": f"egg:swift#{f.replace('-', '_')}"} for f in filters},
            "filter:authtoken": {"paste.filter_factory":
                                 "keystonemiddleware.auth_token:filter_factory",
                                 "delay_auth_decision": "true", **self.authtoken("swift")},
            "filter:keystoneauth": {"use": "egg:swift#keystoneauth",
                                    "operator_roles": "admin, member"}})

    def start_swift(self) -> None:
        for server in (*SWIFT_SERVERS, "swift-proxy"):
            conf = self.etc / "swift" / f"{server.removeprefix('swift-')}-server.conf"
            self.start_process(server, [self.bin(f"{server}-server"), str(conf), "--verbose"])

    def octavia_pki(self) -> dict[str, str]:
        """Octavia's controller CA and the client certificate it presents to amphorae."""
        d = self.etc / "octavia" / "pki"
        d.mkdir(parents=True, exist_ok=True)

        def ossl(*args):
            subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

        ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=k8simg test cloud octavia CA", "-keyout", "ca.key", "-out", "ca.crt")
        ossl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=octavia-controller",
             "-keyout", "client.key", "-out", "client.csr")
        ossl("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-out", "client.crt")
        (d / "client.pem").write_bytes((d / "client.crt").read_bytes()
                                       + (d / "client.key").read_bytes())
        for f in d.iterdir():
            f.chmod(0o600)
        return {n: str(d / n) for n in ("ca.crt", "ca.key", "client.pem")}

    # ------------------------------------------------------------------ infrastructure
    def start_mariadb(self) -> None:
        data = self.root / "db" / "data"
        data.mkdir(parents=True)
        self.run("mariadb-install", ["mariadb-install-db", "--no-defaults", f"--datadir={data}",
                                     "--user=root", "--auth-root-authentication-method=normal",
                                     "--skip-test-db"])
        self.start_process("mariadb", [
            "mariadbd", "--no-defaults", f"--datadir={data}", f"--socket={self.db_socket}",
            "--skip-networking", "--user=root", f"--pid-file={self.root / 'db' / 'pid'}",
            "--innodb-buffer-pool-size=256M", "--innodb-flush-log-at-trx-commit=0",
            "--innodb-doublewrite=0", "--skip-log-bin", "--max-connections=1000",
            "--character-set-server=utf8mb4", f"--log-error={self.logs / 'mariadb-error.log'}"])
        self.wait("MariaDB's socket", lambda: self.db_socket.exists(), 60)
        sql = "".join(f"CREATE DATABASE {d} CHARACTER SET utf8;" for d in DATABASES)
        self.run("mariadb-client", ["mariadb", f"--socket={self.db_socket}", "-uroot", "-e", sql])

    def rabbit_env(self) -> dict[str, str]:
        d = self.root / "rabbit"
        return self._env(
            HOME=str(d), RABBITMQ_NODENAME="k8simg@localhost",
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1", RABBITMQ_NODE_PORT=str(self.ports["rabbit"]),
            RABBITMQ_DIST_PORT=str(self.ports["rabbit-dist"]), ERL_EPMD_ADDRESS="127.0.0.1",
            ERL_EPMD_PORT=str(self.ports["epmd"]), RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.logs / "rabbit"), RABBITMQ_CONFIG_FILE=str(d / "rabbitmq"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(d / "pid"), RABBITMQ_CONF_ENV_FILE="/dev/null",
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}")

    def start_rabbit(self) -> None:
        d = self.root / "rabbit"
        d.mkdir()
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.ports['rabbit']}\n")
        (d / "enabled_plugins").write_text("[].\n")
        env = self.rabbit_env()
        # epmd in the foreground, started here: the one Erlang would start daemonizes into a
        # session of its own and would outlive the cloud.
        self.start_process("epmd", [shutil.which("epmd") or "/usr/lib/erlang/bin/epmd",
                                    "-port", str(self.ports["epmd"]), "-address", "127.0.0.1"],
                           env)
        self.start_process("rabbitmq", ["/usr/lib/rabbitmq/bin/rabbitmq-server"], env)
        ctl = ["/usr/lib/rabbitmq/bin/rabbitmqctl", "-n", "k8simg@localhost"]

        def started():
            return subprocess.run([*ctl, "await_startup", "--timeout", "30"], env=env,
                                  capture_output=True, timeout=60).returncode == 0
        self.wait("RabbitMQ to start", started, 120, interval=1)

    # ------------------------------------------------------------------ services
    def start_api(self, name: str, module: str, env: dict, processes: int = 1,
                  pyargv: str | None = None) -> None:
        args = [self.bin("uwsgi"), "--http-socket", f"127.0.0.1:{self.ports[name]}",
                "--module", module, "--master", "--processes", str(processes),
                "--enable-threads", "--need-app", "--die-on-term", "--lazy-apps",
                "--buffer-size", "65535", "--add-header", "Connection: close",
                "--http-timeout", "300", "--socket-timeout", "300",
                "--procname-prefix", f"k8simg-cloud-{name}-",
                "--import", "k8simg_testcloud.rpc"]  # RPC replies looked for every 5 ms
        if pyargv:
            args += ["--pyargv", pyargv]
        self.start_process(name, args, env)

    def start_service(self, name: str, *args: str) -> None:
        """The console script ``name`` with the test cloud's RPC patch
        (:mod:`k8simg_testcloud.rpc`, as for the APIs and the computes). Its log is
        ``NAME.log``: oslo.log would name it after the outermost frame's file, here runpy's."""
        self.start_process(name, [self.bin("python"), "-m", "k8simg_testcloud.run", name, *args,
                                  "--log-file", f"{name}.log"])

    def wait_http(self, name: str, path: str = "/", timeout: float = 120) -> None:
        def answers():
            try:
                with urllib.request.urlopen(self.url(name) + path, timeout=5):
                    return True
            except urllib.error.HTTPError as e:
                return e.code < 500
        self.wait(f"{name} to answer on {self.url(name)}", answers, timeout)

    def sync_databases(self) -> None:
        conf = {p: str(self.etc / p / f"{p}.conf") for p in SERVICES}
        conf["glance"] = str(self.etc / "glance" / "glance-api.conf")
        k = self.bin("keystone-manage")
        self.run("keystone-manage", [k, "--config-file", conf["keystone"], "db_sync"])
        for repo in ("fernet_setup", "credential_setup"):
            self.run("keystone-manage", [k, "--config-file", conf["keystone"], repo,
                                         "--keystone-user", "root", "--keystone-group", "root"])
        self.run("glance-manage", [self.bin("glance-manage"), "--config-file", conf["glance"],
                                   "db_sync"])
        self.run("placement-manage", [self.bin("placement-manage"), "--config-file",
                                      conf["placement"], "db", "sync"])
        nm = [self.bin("nova-manage"), "--config-file", conf["nova"]]
        self.run("nova-manage", [*nm, "api_db", "sync"])
        self.run("nova-manage", [*nm, "cell_v2", "map_cell0", "--database_connection",
                                 self.db_url("nova_cell0")])
        self.run("nova-manage", [*nm, "cell_v2", "create_cell", "--name", "cell1"])
        self.run("nova-manage", [*nm, "db", "sync"])
        self.run("neutron-db-manage", [self.bin("neutron-db-manage"), "--config-file",
                                       conf["neutron"], "--config-file",
                                       str(self.etc / "neutron" / "ml2_conf.ini"),
                                       "upgrade", "heads"])
        self.run("cinder-manage", [self.bin("cinder-manage"), "--config-file", conf["cinder"],
                                   "db", "sync"])
        self.run("octavia-db-manage", [self.bin("octavia-db-manage"), "--config-file",
                                       conf["octavia"], "upgrade", "head"])

    def bootstrap_keystone(self) -> None:
        k = self.bin("keystone-manage")
        self.run("keystone-manage", [
            k, "--config-file", str(self.etc / "keystone" / "keystone.conf"), "bootstrap",
            f"--bootstrap-password={self.password}", "--bootstrap-admin-url", self.auth_url,
            "--bootstrap-internal-url", self.auth_url, "--bootstrap-public-url", self.auth_url,
            "--bootstrap-region-id", REGION])

    def start(self) -> "TestCloud":
        """Start everything; returns once every API answers and the computes are known."""
        started = time.monotonic()
        rpc_interval_checked()
        if self.root.exists():
            shutil.rmtree(self.root)
        for d in (self.root, self.logs, self.root / "lock", self.root / "state"):
            d.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        names = ["keystone", "glance", "placement", "nova", "neutron", "cinder", "octavia",
                 "rabbit", "rabbit-dist", "epmd", "octavia-hm", "swift", *SWIFT_SERVERS]
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.clouds_yaml(self.root / "clouds.yaml")
        (self.root / "ready").write_text(json.dumps(
            {"seconds": round(time.monotonic() - started, 1), "ports": self.ports}))
        return self

    @classmethod
    def attach(cls, root: Path) -> "TestCloud":
        """A cloud already running under ``root`` (started by ``python -m
        tests.cloud.testcloud``): for iterating on cloud tests without a restart each time."""
        ready = json.loads((root / "ready").read_text())
        clouds = json.loads((root / "clouds.yaml").read_text())
        cloud = cls(root, ports=ready["ports"],
                    password=clouds["clouds"]["k8simg-test"]["auth"]["password"])
        cloud.attached = True
        return cloud

    def _start(self) -> None:
        self.start_mariadb()
        self.start_rabbit()
        self.configure()
        self.sync_databases()
        self.bootstrap_keystone()
        e = self.etc
        self.start_api("keystone", "keystone.wsgi.api:application", self._env(
            OS_KEYSTONE_CONFIG_DIR=str(e / "keystone")), processes=2)
        self.wait_http("keystone", "/v3")
        self.register_services()
        self.start_api("glance", "glance.wsgi.api:application",
                       self._env(OS_GLANCE_CONFIG_DIR=str(e / "glance")))
        self.start_api("placement", "placement.wsgi.api:application",
                       self._env(OS_PLACEMENT_CONFIG_DIR=str(e / "placement")))
        self.start_api("nova", "nova.wsgi.osapi_compute:application", self._env(
            OS_NOVA_CONFIG_DIR=str(e / "nova"), OS_NOVA_CONFIG_FILES="api-paste.ini;nova.conf"),
            processes=2)
        self.start_api("neutron", "neutron.wsgi.api:application", self._env(
            OS_NEUTRON_CONFIG_DIR=str(e / "neutron"),
            OS_NEUTRON_CONFIG_FILES="neutron.conf;ml2_conf.ini"), processes=2)
        self.start_api("cinder", "cinder.wsgi.api:application", self._env(),
                       pyargv=f"--config-file {e / 'cinder' / 'cinder.conf'}")
        self.start_api("octavia", "octavia.wsgi.api:application", self._env(),
                       pyargv=f"--config-file {e / 'octavia' / 'octavia.conf'}")
        nova = ["--config-file", str(e / "nova" / "nova.conf")]
        self.start_service("nova-conductor", *nova)
        self.start_service("nova-scheduler", *nova)
        for host in COMPUTES:
            self.start_process(host, [self.bin("python"), "-m", "k8simg_testcloud.compute",
                                      *nova, "--config-file", str(e / "nova" / f"{host}.conf")])
        cinder = ["--config-file", str(e / "cinder" / "cinder.conf")]
        self.start_service("cinder-scheduler", *cinder)
        self.start_service("cinder-volume", *cinder)
        self.start_service("octavia-worker", "--config-file", str(e / "octavia" / "octavia.conf"))
        self.start_swift()
        for name in ("glance", "placement", "nova", "neutron", "cinder", "octavia"):
            self.wait_http(name)
        self.wait_http("swift", "/healthcheck")
        for name in SWIFT_SERVERS:
            self.wait_http(name)
        self.seed()

    # ------------------------------------------------------------------ identity and seed data
    def admin(self):
        import openstack

        return openstack.connect(auth_url=self.auth_url, username="admin", password=self.password,
                                 project_name="admin", user_domain_name="Default",
                                 project_domain_name="Default", region_name=REGION,
                                 identity_interface="public")

    def member(self):
        """A connection as the tests' project member (what deploy runs as)."""
        import openstack

        return openstack.connect(auth_url=self.auth_url, username=USER, password=self.password,
                                 project_name=PROJECT, user_domain_name="Default",
                                 project_domain_name="Default", region_name=REGION)

    def image(self, name: str, work: Path, size: str = "1G", meta: dict | None = None) -> str:
        """A small real qcow2 (blank: the computes run nothing) in Glance as the project's
        image ``name``, replacing any of that name (a cloud reused across runs); its id."""
        qcow2 = Path(work) / f"{name}.qcow2"
        subprocess.run(["qemu-img", "create", "-f", "qcow2", str(qcow2), size], check=True,
                       capture_output=True)
        conn = self.member()
        for old in conn.image.images(name=name):
            conn.image.delete_image(old)
        return conn.image.create_image(name, filename=str(qcow2), disk_format="qcow2",
                                       container_format="bare", wait=True,
                                       meta=meta or {}).id

    def script_console(self, server: str, text: str | None) -> None:
        """What the computes give as the console log of every server named ``server`` from now
        on (None: the default, a first boot that ends at the login prompt)."""
        path = self.root / "state" / "consoles" / server
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

    def register_services(self) -> None:
        conn = self.admin()
        ident = conn.identity
        service_project = ident.create_project(name="service", domain_id="default")
        roles = {r.name: r for r in ident.roles()}
        for extra in ("service", "load-balancer_member"):
            if extra not in roles:
                roles[extra] = ident.create_role(name=extra)
        catalog = {"glance": ("image", ""), "placement": ("placement", ""),
                   "nova": ("compute", "/v2.1"), "neutron": ("network", ""),
                   "cinder": ("block-storage", "/v3/%(project_id)s"),
                   "octavia": ("load-balancer", ""),
                   "swift": ("object-store", "/v1/AUTH_%(project_id)s")}
        for name, (stype, path) in catalog.items():
            user = ident.create_user(name=name, password=self.password, domain_id="default",
                                     default_project_id=service_project.id)
            for role in ("admin", "service"):
                ident.assign_project_role_to_user(service_project, user, roles[role])
            svc = ident.create_service(name=name, type=stype)
            for interface in ("public", "internal", "admin"):
                ident.create_endpoint(service_id=svc.id, interface=interface,
                                      url=self.url(name) + path, region_id=REGION)
        project = ident.create_project(name=PROJECT, domain_id="default")
        user = ident.create_user(name=USER, password=self.password, domain_id="default",
                                 default_project_id=project.id)
        for role in ("member", "reader", "load-balancer_member"):
            ident.assign_project_role_to_user(project, user, roles[role])

    def seed(self) -> None:
        """Flavors, the external network, and every compute host known to Nova."""
        conn = self.admin()
        # Every compute host mapped to the cell. Nothing looks for new hosts later (the
        # scheduler's periodic discovery is off), so a host missed here would stay unplaceable;
        # and a service record is "up" before its compute node exists for discover_hosts to
        # find: discovered again until all are mapped.
        self.wait(f"{len(COMPUTES)} nova-compute services up", lambda: len(
            [s for s in conn.compute.services(binary="nova-compute") if s.state == "up"])
            == len(COMPUTES), 180)
        manage = [self.bin("nova-manage"), "--config-file", str(self.etc / "nova" / "nova.conf"),
                  "cell_v2"]

        def mapped() -> bool:
            self.run("nova-manage", [*manage, "discover_hosts", "--verbose"])
            hosts = self.run("nova-manage", [*manage, "list_hosts"])
            return all(f" {h} " in hosts for h in COMPUTES)
        self.wait(f"{len(COMPUTES)} compute hosts mapped to the cell", mapped, 180, interval=2)
        self.wait(f"{len(COMPUTES)} hypervisors", lambda: len(list(conn.compute.hypervisors()))
                  == len(COMPUTES), 120)
        self.wait("cinder-volume up", lambda: any(
            s.binary == "cinder-volume" and s.state == "up"
            for s in conn.block_storage.services()), 120)
        # Up is its heartbeat in the database; the scheduler places volumes only on the pools it
        # has heard of from the volume service (sent at start and then each minute). A volume
        # asked for before that goes to error: "No valid backend" (seen in CI, first deploy).
        self.wait("cinder-scheduler to know the volume pool",
                  lambda: any(True for _ in conn.block_storage.backend_pools()), 180)
        for name, (vcpus, ram, disk) in FLAVORS.items():
            conn.compute.create_flavor(name=name, vcpus=vcpus, ram=ram, disk=disk,
                                       is_public=True)
        net = conn.network.create_network(name=EXTERNAL_NETWORK, is_router_external=True,
                                          provider_network_type="flat",
                                          provider_physical_network="public", is_shared=False)
        conn.network.create_subnet(network_id=net.id, name=f"{EXTERNAL_NETWORK}-subnet",
                                   ip_version=4, cidr=EXTERNAL_CIDR, enable_dhcp=False,
                                   gateway_ip=EXTERNAL_CIDR.replace("0/24", "1"))

    def users_for_isolation_tests(self) -> None:
        """A user holding only ``member`` on the tests' project (Keystone's default inference
        implies ``reader``), and the admin holding ``admin`` there too (admin credentials that
        see every project's resources). Idempotent."""
        ident = self.admin().identity
        project = ident.find_project(PROJECT, domain_id="default")
        roles = {r.name: r for r in ident.roles()}
        user = ident.find_user(MEMBER_ONLY, domain_id="default")
        if user is None:
            user = ident.create_user(name=MEMBER_ONLY, password=self.password,
                                     domain_id="default", default_project_id=project.id)
        ident.assign_project_role_to_user(project, user, roles["member"])
        admin = ident.find_user("admin", domain_id="default")
        ident.assign_project_role_to_user(project, admin, roles["admin"])

    def clouds_yaml(self, path: Path) -> Path:
        """A clouds.yaml with ``k8simg-test`` (a project member), ``k8simg-test-admin``, and
        the users of :meth:`users_for_isolation_tests`."""
        def cloud(user, project):
            return {"auth": {"auth_url": self.auth_url, "username": user,
                             "password": self.password, "project_name": project,
                             "user_domain_name": "Default", "project_domain_name": "Default"},
                    "region_name": REGION, "identity_api_version": 3}
        data = {"clouds": {"k8simg-test": cloud(USER, PROJECT),
                           "k8simg-test-admin": cloud("admin", "admin"),
                           # made by users_for_isolation_tests():
                           "k8simg-test-member": cloud(MEMBER_ONLY, PROJECT),
                           "k8simg-test-admin-in-project": cloud("admin", PROJECT)}}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)  # YAML is a superset of JSON
        os.replace(tmp, path)
        return path


def rpc_interval_checked() -> None:
    """``K8SIMG_TESTCLOUD_RPC_INTERVAL`` (seconds between looks for an RPC reply, see
    ``plugins/k8simg_testcloud/rpc.py``) as a number the services can use: uwsgi would only
    print a bad one's error and serve its API unpatched."""
    value = os.environ.get("K8SIMG_TESTCLOUD_RPC_INTERVAL")
    if value is None:
        return
    try:
        ok = 0 < float(value) <= 1
    except ValueError:
        ok = False
    if not ok:
        raise CloudError(f"K8SIMG_TESTCLOUD_RPC_INTERVAL={value!r}: seconds, more than 0 and "
                         "at most 1 (upstream's is 0.5)")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def main(argv: list[str]) -> int:
    """``python -m tests.cloud.testcloud DIR``: start a cloud, print where, stop on Ctrl-C or
    SIGTERM."""
    root = Path(argv[0] if argv else "/tmp/k8simg-test-cloud").resolve()
    cloud = TestCloud(root)
    t = time.monotonic()
    cloud.start()
    print(f"test cloud ready in {time.monotonic() - t:.0f} s; clouds.yaml: "
          f"{cloud.clouds_yaml(root / 'clouds.yaml')}", file=sys.stderr)
    # SIGTERM too: a job started in the background ignores SIGINT, so Ctrl-C's signal alone
    # left such a cloud running (and a plain kill left its services behind).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cloud.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
