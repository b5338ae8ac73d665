"""The local cloud: QEMU virtual machines booted from the baked image with config drives."""
