"""What k8simg does to a cluster, over the cloud contract (:mod:`k8simg.clouds`): bake the node
image (:mod:`.bake`, :mod:`.artifacts`, :mod:`.images`), deploy and destroy (:mod:`.deploy`), a
node's boot, Ready gate and retirement (:mod:`.lifecycle`, :mod:`.drain`), the rolling upgrade
(:mod:`.upgrade`) and etcd through the cloud's way in (:mod:`.etcd`), its members replaced one at a time
(:mod:`.membership`)."""
