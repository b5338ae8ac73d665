"""k8simg: immutable Kubernetes node images and clusters for OpenStack."""

__version__ = "0.1.0"
