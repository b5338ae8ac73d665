"""Every port k8simg opens, names or dials, once. (The API server's port is a setting:
``api.port``.)"""

SSH = 22
ETCD_CLIENT = 2379
ETCD_PEER = 2380
FLANNEL_VXLAN = 8472  # UDP, between nodes
KUBELET = 10250
NODE_PORTS = (30000, 32767)  # Kubernetes' default NodePort range
