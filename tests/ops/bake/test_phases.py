"""The bake's phases, timed: diskimage-builder's steps read from its log, k8simg's own
staging timed as it runs, all of it in ``bake --output json``. The slow tier reads the real
bake's log (``test_bake.py``); here, lines as diskimage-builder 3.43 writes them."""

import json
import textwrap

import pytest
from click.testing import CliRunner

from k8simg.cli import cli
from k8simg.ops import bake as bake_module
from k8simg.ops.bake import DIB_MARKS, dib_phases

# One line per step, as diskimage-builder 3.43.0 logged them in a bake of the test image
# (2026-11-30; the hooks' paths shortened), plus lines in between that name no step.
LOG = textwrap.dedent("""\
    2026-11-30 13:20:15.711 | diskimage-builder version 3.43.0
    2026-11-30 13:20:15.723 | Building elements: debian-minimal vm block-device-mbr k8simg-node
    2026-11-30 13:20:16.059 | Copying hooks /x/elements/k8simg-node/install.d/50-k8simg-node
    2026-11-30 13:20:24.236 | dib-run-parts Running /tmp/dib_build.D/hooks/root.d/01-hook
    2026-11-30 13:20:58.441 | dib-run-parts Running /tmp/dib_build.D/hooks/extra-data.d/01-hook
    2026-11-30 13:20:59.038 | dib-run-parts Running /tmp/in_target.d/pre-install.d/01-hook
    2026-11-30 13:21:02.112 | dib-run-parts Running /tmp/in_target.d/install.d/01-hook
    2026-11-30 13:21:20.000 | Setting up containerd (1.6.20~ds1-1+b1) ...
    2026-11-30 13:21:33.667 | dib-run-parts Running /tmp/in_target.d/post-install.d/01-hook
    2026-11-30 13:21:47.385 | INFO diskimage_builder.block_device.blockdevice [-] create() called
    2026-11-30 13:21:57.217 | dib-run-parts Running /tmp/in_target.d/finalise.d/01-hook
    2026-11-30 13:22:13.475 | dib-run-parts Running /tmp/dib_build.D/hooks/cleanup.d/01-hook
    2026-11-30 13:22:35.447 | Converting image using qemu-img convert
    2026-11-30 13:22:54.416 | Image file /out/k8simg-1.35.2.qcow2 created...
    2026-11-30 13:22:55.792 | Build completed successfully
    """)


def test_each_step_of_diskimage_builder_is_timed_from_its_log():
    phases = dib_phases(LOG)
    assert [p.name for p in phases] == [name for name, _ in DIB_MARKS if name]
    got = {p.name: p.seconds for p in phases}
    assert got["diskimage-builder setup"] == 8.5  # not ended by the element copy's install.d
    assert got["base system (debootstrap cache, dist-upgrade)"] == 34.2
    assert got["packages (install.d)"] == 31.6  # not ended by a package's own output
    assert got["finalise.d (initramfs, bootloader, presets)"] == 16.3
    assert got["qcow2 conversion"] == 19.0
    # from 'Building elements' to the qcow2 written (each step rounded to 0.1 s)
    assert sum(got.values()) == pytest.approx(158.7, abs=0.3)


def test_a_step_whose_line_is_missing_is_folded_into_the_one_before():
    log = "".join(ln for ln in LOG.splitlines(True) if "create() called" not in ln)
    got = {p.name: p.seconds for p in dib_phases(log)}
    assert "disk image (partition, mkfs, copy)" not in got
    assert got["post-install.d"] == 23.6  # runs on to finalise.d: 13.7 + 9.8
    assert sum(got.values()) == pytest.approx(158.7, abs=0.3)


def test_a_log_without_times_or_steps_gives_no_phases():
    assert dib_phases("Building elements: x\nConverting image using qemu-img convert\n") == []
    assert dib_phases("2026-11-30 13:20:15.711 | diskimage-builder version 3.43.0\n") == []


# TEST STAND-IN for diskimage-builder: writes the log above and an empty qcow2 where -o says.
STAND_IN = """#!/bin/bash
# TEST STAND-IN for diskimage-builder (the slow tier runs the real one)
while [ $# -gt 0 ]; do [ "$1" = -o ] && out=$2; shift; done
cat <<'LOG'
{log}LOG
mkdir -p "$out.d" && : > "$out.qcow2"
"""


def test_bake_json_carries_every_phase(tmp_path, monkeypatch):
    stand_in = tmp_path / "disk-image-create"
    stand_in.write_text(STAND_IN.format(log=LOG))
    stand_in.chmod(0o755)
    monkeypatch.setattr(bake_module, "dib_command", lambda: stand_in)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    r = CliRunner().invoke(cli, ["bake", "--without-kubernetes", "--output-dir",
                                 str(tmp_path / "out"), "-o", "json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    names = [p["phase"] for p in out["phases"]]
    # k8simg's own staging first, diskimage-builder's steps, then the checksum and manifest
    assert names == ["container images (pull or read, verify)",
                     *[name for name, _ in DIB_MARKS if name], "checksum and manifest"]
    assert all(p["seconds"] >= 0 for p in out["phases"])
    assert sum(p["seconds"] for p in out["phases"]) >= 158.4
    assert "qcow2 conversion" in r.stderr  # the same table on stderr, for a person
