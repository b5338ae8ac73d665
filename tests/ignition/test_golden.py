"""Golden files of rendered configs, PEM blocks replaced by placeholders.

After a deliberate change: ``pytest tests/ignition/test_golden.py --update-golden`` rewrites
them and still fails once; review the diff and commit it.
"""

from pathlib import Path

import pytest

from k8simg.ignition.render import render_node
from tests.ignition.support import normalised

GOLDEN = Path(__file__).parent / "golden"

CASES = {
    "ha3-openstack": ("ha3", "openstack", ["master-0", "worker-0", "bastion"]),
    "ha3-etcd3-local": ("ha3-etcd3", "local", ["master-1", "etcd-2"]),
    "single-local": ("single", "local", ["master-0"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_configs_match_golden_files(rendered_cluster, request, case):
    topology, cloud, nodes = CASES[case]
    _, ctx = rendered_cluster(topology, cloud=cloud)
    update = request.config.getoption("--update-golden")
    changed = []
    for short in nodes:
        node = next(n for n in ctx.nodes if n.name.endswith(short))
        text = normalised(render_node(ctx, node))
        path = GOLDEN / f"{case}-{short}.yaml"
        if update:
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
                changed.append(path.name)
            continue
        assert path.exists(), f"{path} missing: run with --update-golden"
        assert text == path.read_text(), f"{path.name} differs from the renderer's output"
    if update:
        pytest.fail(f"golden files rewritten ({', '.join(changed) or 'none changed'}); "
                    "review and commit them, then run again without --update-golden")
