import json

import pytest

from k8simg.ignition.render import render_context
from k8simg.model.credential import CloudCredential, ServiceNetwork
from k8simg.pki import cluster_pki
from k8simg.pki.keys import generate_key

TOPOLOGIES = {
    "single": {"topology": "single", "masters": {"count": 1, "flavor": "m", "volume_size_gb": 25},
               "workers": {"count": 0, "flavor": "w", "volume_size_gb": 50}},
    "one-master": {"topology": "one-master",
                   "masters": {"count": 1, "flavor": "m", "volume_size_gb": 25},
                   "workers": {"count": 2, "flavor": "w", "volume_size_gb": 50}},
    "ha3": {},
    "ha5": {"masters": {"count": 5, "flavor": "m", "volume_size_gb": 25},
            "workers": {"count": 3, "flavor": "w", "volume_size_gb": 50}},
    "ha3-etcd3": {"etcd": {"placement": "dedicated", "count": 3, "flavor": "e",
                           "volume_size_gb": 20}},
}

CREDENTIAL = {"auth_url": "https://keystone.example.com:5000/v3",
              "application_credential_id": "0123456789abcdef0123456789abcdef",
              "application_credential_secret": "never-printed-" + "x" * 70,
              "region": "RegionOne"}

# The subnet and external network deploy would record (Neutron UUIDs).
SERVICE_NETWORK = ServiceNetwork("5b1d6a2e-8f3c-4e7a-9d21-0c4f6b8a3e57",
                                 "e3a9c1f0-2b7d-4c58-a6e4-91d0f7b2c8a3")

GOLDEN_UID = "0123456789abcdef"

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGc5Vw6ODvYqPzgxHC3Pq3pW5v5Vu9rX8mWl8J2B8vAQ op@desk"


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite tests/ignition/golden/* from the current renderer (the run "
                          "still fails once, so an update is always a deliberate commit)")


@pytest.fixture
def rendered_cluster(make_cluster, key_pool):
    """Build a cluster directory with PKI (and credential for OpenStack) and its render context."""

    def build(topology="ha3", algorithm="ecdsa-p256", cloud="local", **extra):
        overrides = dict(TOPOLOGIES[topology])
        overrides["pki"] = {"key_algorithm": algorithm, "ca_validity_days": 3650,
                            "cert_validity_days": 365}
        overrides["cloud"] = cloud
        overrides["bastion"] = {"enabled": True, "flavor": "b", "ssh_authorized_keys": [ED25519],
                                "allowed_cidrs": ["0.0.0.0/0"]}
        name = extra.pop("name", topology.replace("-", ""))  # the directory names the cluster
        overrides.update(extra)
        cd = make_cluster(name, **overrides)
        # ECDSA keys are cheap: real, distinct keys (the secret scan relies on it). Only the
        # slow RSA sizes reuse pooled keys.
        # The real clock: some of these certificates meet real etcd and TLS peers.
        cluster_pki(cd, keygen=key_pool if algorithm.startswith("rsa") else generate_key).ensure()
        if cloud != "local":
            path = cd.path / CloudCredential.FILE
            path.parent.mkdir()
            path.write_text(json.dumps(CREDENTIAL))
            # A fixed UID (the golden files hold it) and what deploy records.
            state = json.loads(cd.state.path.read_text())
            cd.state.path.write_text(json.dumps({**state, "uid": GOLDEN_UID}))
            cd.state.set_service_network(SERVICE_NETWORK)
        return cd, render_context(cd)

    return build
