"""Plugins of k8simg's test cloud (real OpenStack services, no hypervisor, no agents)."""
