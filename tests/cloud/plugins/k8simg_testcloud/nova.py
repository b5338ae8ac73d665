"""Nova's fake compute driver with a console log: a server's console is what a test scripted
for it (``<test cloud>/state/consoles/<server name>``), else a first boot that ends at the
node's login prompt, as k8simg's image prints it on its serial console.

Nova loads compute drivers from ``nova.virt`` only, so nova-compute runs through
:mod:`k8simg_testcloud.compute`, which makes this module ``nova.virt.k8simg_scripted``.
"""

from pathlib import Path

from nova import conf
from nova.virt import fake

CONF = conf.CONF

BOOT = """\
[    0.000000] Linux version 6.1.0-41-cloud-amd64 (debian-kernel@lists.debian.org)
[    0.000000] Command line: BOOT_IMAGE=/boot/vmlinuz-6.1.0-41-cloud-amd64 console=ttyS0
[  OK  ] Finished ignition-fetch.service - Ignition (fetch).
[  OK  ] Finished ignition-disks.service - Ignition (disks).
[  OK  ] Finished ignition-files.service - Ignition (files).
[  OK  ] Reached target initrd.target - Initrd Default Target.
[  OK  ] Started k8simg-etcd.service - etcd (k8simg).
[  OK  ] Reached target multi-user.target - Multi-User System.

Debian GNU/Linux 12 {hostname} ttyS0

{hostname} login: """


def scripted(name: str) -> Path:
    """Where a test puts the console of the server ``name`` (next to the computes' states)."""
    return Path(CONF.state_path).parent / "consoles" / name


class ScriptedConsoleDriver(fake.FakeDriver):
    def get_console_output(self, context, instance):
        path = scripted(instance.display_name)
        if path.is_file():
            return path.read_text()
        return BOOT.format(hostname=instance.hostname or instance.display_name)
