"""The OpenStack cloud through openstacksdk: :mod:`.connect` (the connection, the cluster's
scope, waits), one module per service (:mod:`.network`, :mod:`.security`, :mod:`.compute`,
:mod:`.loadbalancer`, :mod:`.identity`, :mod:`.quota`, :mod:`.glance`), :mod:`.destroy`,
:mod:`.tunnel` (SSH through the bastion), and :mod:`.driver`, the :class:`~k8simg.clouds.base.Cloud`
they make up. Only :mod:`k8simg.clouds` imports it."""
