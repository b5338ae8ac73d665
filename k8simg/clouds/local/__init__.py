"""The local cloud: QEMU virtual machines on this host booted from the baked image with config
drives (:mod:`.vm`), in a network namespace of the cluster's own (:mod:`.network`) with dnsmasq
and haproxy (:mod:`.services`), every process recorded (:mod:`.process`), each node's state read
from its serial console (:mod:`.console`); :mod:`.driver` is the
:class:`~k8simg.clouds.base.Cloud` they make up. Only :mod:`k8simg.clouds` imports it."""
