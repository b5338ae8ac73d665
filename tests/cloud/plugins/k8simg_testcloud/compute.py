"""nova-compute with :class:`k8simg_testcloud.nova.ScriptedConsoleDriver` loadable as
``compute_driver = k8simg_scripted.ScriptedConsoleDriver`` (Nova imports drivers from
``nova.virt`` only), and with the test cloud's RPC patch (:mod:`k8simg_testcloud.rpc`)."""

import sys


def main() -> None:
    from nova.cmd import compute  # first: nova's own start-up (its monkey patching)

    import k8simg_testcloud.rpc  # noqa: F401 - patches oslo.messaging when it is imported
    from k8simg_testcloud import nova as scripted

    sys.modules["nova.virt.k8simg_scripted"] = scripted
    sys.exit(compute.main())


if __name__ == "__main__":
    main()
