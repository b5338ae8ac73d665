"""``k8simg bake --upload`` / ``k8simg image upload`` against the real Glance of the test cloud
(slow tier: the cloud takes a minute or two to start)."""

import hashlib
import json
import subprocess
import sys
from types import SimpleNamespace

import openstack
import pytest

from k8simg.clouds.base import CloudError
from k8simg.clouds.openstack.connect import connect
from k8simg.clouds.openstack.glance import TAG, find_uploaded, image_facts, image_name, upload
from k8simg.model.manifest import Manifest
from tests.ops.bake.conftest import baked_image  # noqa: F401  (the slow tier's image)

pytestmark = pytest.mark.slow


def small_bake(tmp_path, name="k8simg-1.35.2", etcd_join=True):
    """A real (tiny) qcow2 with a manifest as ``k8simg bake`` writes it; each test's differs
    (its virtual size comes from the name), as the tests share one cloud."""
    image = tmp_path / f"{name}.qcow2"
    size = 64 + int(hashlib.sha256(name.encode()).hexdigest()[:4], 16)
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(image), f"{size}M"], check=True,
                   capture_output=True)
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    manifest = {"k8simg_version": "0.1.0", "kubernetes_version": "1.35.2",
                "kubernetes_binaries": {"kubelet": {"sha256": "0" * 64}},
                "built_at": "2026-11-26T10:00:00+00:00",
                "etcd": {"version": "3.6.6",
                         "source": "registry.k8s.io/etcd:3.6.6-0@sha256:" + "e" * 64,
                         **({"join": True} if etcd_join else {})},
                "image": {"file": image.name, "sha256": digest,
                          "bytes": image.stat().st_size}}
    path = tmp_path / f"{name}.manifest.json"
    path.write_text(json.dumps(manifest))
    return image, path, digest


def k8simg(*args, env=None):
    return subprocess.run([sys.executable, "-m", "k8simg", *args], capture_output=True,
                          text=True, env=env, timeout=600)


def test_upload_is_idempotent_on_the_checksum(os_cloud, tmp_path):
    image, manifest, digest = small_bake(tmp_path)
    conn = connect(os_cloud)
    first = upload(conn, manifest)
    assert first.created
    got = conn.image.get_image(first.id)
    assert got.status == "active" and got.disk_format == "qcow2"
    assert got.name == image_name(Manifest.load(manifest)) == \
        f"k8simg-0.1.0-kubernetes-1.35.2-20261126T100000Z-{digest[:12]}"
    assert (got.os_distro, got.hw_disk_bus, got.hw_qemu_guest_agent) == ("debian", "virtio", "no")
    props = got.properties  # the properties Glance has no schema for
    assert props["k8simg_version"] == "0.1.0"
    assert props["k8simg_kubernetes_version"] == "1.35.2"
    assert props["k8simg_kubernetes_binaries"] == "included"
    assert props["k8simg_image_sha256"] == digest
    assert props["k8simg_manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert props["k8simg_etcd_version"] == "3.6.6"
    assert props["k8simg_etcd_source"] == "registry.k8s.io/etcd:3.6.6-0@sha256:" + "e" * 64
    assert props["k8simg_etcd_join"] == "yes"  # --control-plane-surge may boot masters ahead
    assert TAG in got.tags
    # What Glance stored is the qcow2, byte for byte
    stored = conn.image.download_image(got, stream=False).content
    assert hashlib.sha256(stored).hexdigest() == digest

    again = upload(conn, manifest)
    assert (again.id, again.created) == (first.id, False)
    assert [i.id for i in find_uploaded(conn, digest)] == [first.id]

    # read back as the upgrade's preflight reads an image (a surge > 1 needs etcd_join); an
    # image from a bake before etcd-join says nothing, and is read as without it
    scope = SimpleNamespace(conn=conn, where=f"cloud {os_cloud}")  # what image_facts uses
    facts, problems = image_facts(scope, first.id)
    assert problems == []
    assert (facts.ref, facts.has_kubernetes, facts.kubernetes_version, facts.etcd_version,
            facts.etcd_join) == (first.id, True, "1.35.2", "3.6.6", True)
    _, older, _ = small_bake(tmp_path, "k8simg-before-etcd-join", etcd_join=False)
    before = upload(conn, older)
    assert "k8simg_etcd_join" not in conn.image.get_image(before.id).properties
    facts, problems = image_facts(scope, before.id)
    assert problems == [] and facts.etcd_join is False


def test_unfinished_upload_is_replaced(os_cloud, tmp_path):
    image, manifest, digest = small_bake(tmp_path, "k8simg-unfinished")
    conn = connect(os_cloud)
    # What an interrupted upload leaves: the record, no data
    stale = conn.image.create_image("k8simg-interrupted", disk_format="qcow2",
                                    container_format="bare", tags=[TAG],
                                    meta={"k8simg_image_sha256": digest}, allow_duplicates=True)
    assert conn.image.get_image(stale.id).status == "queued"
    done = upload(conn, manifest)
    assert done.created
    assert [i.id for i in find_uploaded(conn, digest)] == [done.id]
    with pytest.raises(openstack.exceptions.NotFoundException):
        conn.image.get_image(stale.id)


def test_image_not_matching_its_manifest_is_not_sent(os_cloud, tmp_path):
    image, manifest, digest = small_bake(tmp_path, "k8simg-tampered")
    with open(image, "ab") as f:
        f.write(b"\0" * 512)
    conn = connect(os_cloud)
    before = {i.id for i in conn.image.images()}
    with pytest.raises(CloudError, match=f"does not match its manifest \\({digest}\\)"):
        upload(conn, manifest)
    assert {i.id for i in conn.image.images()} == before


def test_cli_upload_json_and_unknown_cloud(os_cloud, tmp_path, monkeypatch):
    import os

    _, manifest, digest = small_bake(tmp_path, "k8simg-cli")
    r = k8simg("image", "upload", str(manifest), "--cloud", os_cloud, "-o", "json",
               env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["created"] is True and out["image_name"].endswith(digest[:12])
    r2 = k8simg("image", "upload", str(manifest), "--cloud", os_cloud, "-o", "json",
                env=dict(os.environ))
    assert json.loads(r2.stdout) == {**out, "created": False}
    assert "already in Glance" in r2.stderr
    bad = k8simg("image", "upload", str(manifest), "--cloud", "no-such-cloud",
                 env=dict(os.environ))
    assert bad.returncode == 1
    assert "cloud 'no-such-cloud'" in bad.stderr


def test_baked_image_uploads(baked_image, os_cloud):  # noqa: F811
    """The real image of the slow tier's bake, uploaded and read back."""
    image, manifest_path, _ = baked_image
    conn = connect(os_cloud)
    done = upload(conn, manifest_path)
    got = conn.image.get_image(done.id)
    assert got.status == "active"
    assert got.size == image.stat().st_size
    assert got.properties["k8simg_image_sha256"] == json.loads(manifest_path.read_text())[
        "image"]["sha256"]
