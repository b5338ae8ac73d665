"""What a cluster is, independent of any cloud: its definition (:mod:`.config`, checked by
:mod:`.validate`), its node plan (:mod:`.plan`), its directory and state (:mod:`.cluster`,
:mod:`.state`), the baked image's manifest (:mod:`.manifest`), the pinned releases
(:mod:`.versions`) and the in-cluster cloud credential (:mod:`.credential`).

The lowest layer: it imports nothing else of k8simg but :mod:`k8simg.errors` and
:mod:`k8simg.fsutil`.
"""
