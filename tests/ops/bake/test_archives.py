"""An image archive from an artifacts directory (air-gapped sites) holds plain files only: a
member that would land outside the folder it is unpacked into, or a link, is refused by name
before anything is unpacked (the bake never writes outside its own folders)."""

import io
import tarfile

import pytest

from k8simg.model.images import ImageError, ImageSpec
from k8simg.ops.images import collect
from tests.registry import build_image

REF = "registry.example.org/team/app:1.0"


def archive_with(tmp_path, extra: tarfile.TarInfo, data: bytes = b"") -> tuple:
    layout = tmp_path / "layout"
    layout.mkdir()
    build_image(layout, {"hello": b"hi\n"})
    spec = ImageSpec("app", REF)
    arts = tmp_path / "artifacts"
    (arts / "images").mkdir(parents=True)
    with tarfile.open(arts / "images" / spec.archive, "w") as t:
        for p in sorted(layout.rglob("*")):
            if p.is_file():
                t.add(p, arcname=str(p.relative_to(layout)))
        t.addfile(extra, io.BytesIO(data) if extra.isfile() else None)
    return spec, arts


def member(name: str, kind=tarfile.REGTYPE, data: bytes = b"", target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, len(data), target
    return info


def test_a_plain_archive_is_taken(tmp_path):
    spec, arts = archive_with(tmp_path, member("notes.txt", data=b"x"), b"x")
    (baked,) = collect([spec], tmp_path / "out", artifacts_dir=arts)
    assert baked.digest_source == "artifacts directory"


@pytest.mark.parametrize("info,data,words", [
    (member("../../escaped.txt", data=b"pwned"), b"pwned", "outside the archive's folder"),
    (member("/etc/escaped.txt", data=b"pwned"), b"pwned", "outside the archive's folder"),
    (member("blobs/link", tarfile.SYMTYPE, target="/etc/passwd"), b"", "a link or a device"),
    (member("blobs/hard", tarfile.LNKTYPE, target="index.json"), b"", "a link or a device"),
])
def test_a_member_that_leaves_the_folder_or_links_is_refused(tmp_path, info, data, words):
    spec, arts = archive_with(tmp_path, info, data)
    with pytest.raises(ImageError) as e:
        collect([spec], tmp_path / "out", artifacts_dir=arts)
    assert f"member {info.name!r} is {words}" in str(e.value)
    assert str(arts / "images" / spec.archive) in str(e.value)
    assert not (tmp_path / "escaped.txt").exists() and not list((tmp_path / "out").iterdir())
