"""etcd is upgraded one minor release at a time and never downgraded: an upgrade whose image
carries an etcd too far from its members' refuses before anything changes (the members'
versions are what `etcdctl endpoint status` says; tests/ops/test_snapshot.py reads them from
real members)."""

from k8simg.ops.etcd import version_skew


def test_one_minor_release_at_a_time_and_never_down():
    assert version_skew(["3.4.23"] * 3, "3.5.21") is None
    assert version_skew(["3.5.21", "3.6.6", "3.6.6"], "3.6.6") is None  # a roll under way
    assert version_skew(["3.6.5"] * 3, "3.6.6") is None  # a patch release
    assert version_skew(["3.4.23"] * 3, "3.6.6") == (
        "the image's etcd 3.6.6 is more than one minor release above the members' 3.4: etcd "
        "upgrades one minor release at a time (roll onto an image with etcd 3.5 first)")
    assert version_skew(["3.6.6"] * 3, "3.5.21") == (
        "the image's etcd 3.5.21 is older than the members' 3.6: etcd is never downgraded "
        "by replacement")
    # what is not known is no objection: an image from before k8simg recorded its etcd, or
    # members that did not answer
    assert version_skew(["3.4.23"], None) is None
    assert version_skew(["", ""], "3.6.6") is None
    assert version_skew(["3.4.23-4+b5"], "3.4.23") is None  # Debian's own version string
