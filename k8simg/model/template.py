"""The commented ``cluster.yaml`` that ``k8simg init`` writes: every default, explained, each
value taken from the schema's defaults (:mod:`k8simg.model.config`), never written twice."""

import json
import re
from io import StringIO

from ruamel.yaml import YAML

from k8simg.model.config import ClusterConfig
from k8simg.model.versions import DEFAULT_KUBERNETES_VERSION, RELEASES


def _scalar(value: str) -> str:
    """``value`` as a YAML scalar: plain when that is unambiguous, else quoted."""
    return value if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]*", value) else json.dumps(value)


def _value(value) -> str:
    """A default as YAML on the key's own line: ``null``, ``[]`` or a scalar."""
    if value is None:
        return "null"
    if isinstance(value, list) and not value:
        return "[]"
    return _scalar(str(value))


def _items(values: list, indent: str) -> str:
    """A non-empty default list as the block sequence under its key."""
    return "".join(f"\n{indent}- {_scalar(str(v))}" for v in values)


def render_template(name: str, cloud: str = "local", ssh_keys: list[str] | None = None,
                    kubernetes_version: str = DEFAULT_KUBERNETES_VERSION,
                    image: str | None = None, workers: int | None = None) -> str:
    """The commented ``cluster.yaml`` that ``k8simg init`` writes: every default, explained."""
    d = ClusterConfig(name="x")
    if image is not None or workers is not None:
        d = d.model_copy(update={
            "image": image if image is not None else d.image,
            "workers": d.workers.model_copy(update={"count": workers}) if workers is not None
            else d.workers})
    out = StringIO()
    y = YAML()
    y.default_flow_style = False
    y.dump({"ssh_authorized_keys": ssh_keys or []}, out)
    keys_yaml = "\n".join("  " + line for line in out.getvalue().rstrip().splitlines())
    known = ", ".join(sorted(RELEASES))
    v = {"nameservers": _value(d.network.dns_nameservers), "sans": _value(d.api.extra_sans),
         "fip": _value(d.api.floating_ip), "az": _value(d.openstack.availability_zone),
         "api_cidrs": _items(d.api.allowed_cidrs, "    "),
         "ssh_cidrs": _items(d.bastion.allowed_cidrs, "    ")}
    return f"""\
# k8simg cluster definition. `k8simg config validate` checks it; every other command does too.
# This directory is the cluster's whole state (definition, PKI, kubeconfigs): keep it secret.

# DNS label; nodes are named <name>-master-0, <name>-worker-0, ... and every cloud resource
# carries this name as its tag.
name: {name}

# One of: {known}
kubernetes_version: "{kubernetes_version}"

# "local" runs the nodes as QEMU VMs on this host; anything else names a cloud in clouds.yaml.
cloud: {cloud}

# The node image baked by `k8simg bake` (Glance name or ID; for the local cloud, the qcow2's
# path, relative to this directory unless absolute).
image: {_scalar(d.image)}

# single: one node runs everything; one-master: 1 master + workers;
# ha: 3 or 5 masters behind a load balancer + workers.
topology: {d.topology}

masters:
  count: {d.masters.count}
  flavor: {d.masters.flavor}   # 3 vCPU / 4 GB class
  volume_size_gb: {d.masters.volume_size_gb}        # container storage (/var/lib/containerd, /var/lib/docker)

workers:
  count: {d.workers.count}
  flavor: {d.workers.flavor}   # 6 vCPU / 16 GB class
  volume_size_gb: {d.workers.volume_size_gb}

etcd:
  # stacked: etcd runs on the masters. dedicated: on 3 or 5 nodes of its own.
  placement: {d.etcd.placement}
  count: {d.etcd.count}                   # used when dedicated
  flavor: {d.etcd.flavor}
  volume_size_gb: {d.etcd.volume_size_gb}
  heartbeat_ms: null             # Raft timing; null: 100 (etcd's), 500 on the emulated local cloud
  election_ms: null              # null: 10 heartbeats, at least 1000 (5000 emulated)

bastion:
  enabled: {str(d.bastion.enabled).lower()}
  flavor: {d.bastion.flavor}
  # The operators' OpenSSH public keys; the only way into the cluster's network.
{keys_yaml}
  allowed_cidrs:           # who may SSH to the bastion{v["ssh_cidrs"]}

network:
  node_cidr: {d.network.node_cidr}      # private subnet; node addresses are planned from it
  service_cidr: {d.network.service_cidr}
  pod_cidr: {d.network.pod_cidr}
  dns_domain: {d.network.dns_domain}
  dns_nameservers: {v["nameservers"]}          # for the private subnet; empty uses the cloud's default

api:
  port: {d.api.port}
  extra_sans: {v["sans"]}               # more names or addresses for the API server certificate
  allowed_cidrs:               # who may reach the API through the load balancer{v["api_cidrs"]}
  floating_ip: {v["fip"]}            # a fixed floating IP for the API; null lets deploy allocate one

openstack:
  external_network: {d.openstack.external_network}     # the "floating" network the router uses
  availability_zone: {v["az"]}
  credential_roles: [{", ".join(d.openstack.credential_roles)}]   # the in-cluster integrations' credential
  lb_provider: {d.openstack.lb_provider}          # Services of type LoadBalancer: amphora or ovn

local:                         # the QEMU virtual machines of `cloud: local`
  memory_mb: {d.local.memory_mb}              # per node
  cpus: {d.local.cpus}
  accel: {d.local.accel}                   # tcg (software, works anywhere) or kvm (where /dev/kvm works)
  cpu_model: {_value(d.local.cpu_model)}              # QEMU's -cpu; null: kvm host, tcg qemu64,+rdrand,-svm
  boot_timeout_s: {d.local.boot_timeout_s}         # how long deploy waits for a node's first boot

pki:
  key_algorithm: {d.pki.key_algorithm}   # ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072 or rsa-4096
  ca_validity_days: {d.pki.ca_validity_days}
  cert_validity_days: {d.pki.cert_validity_days}
"""
