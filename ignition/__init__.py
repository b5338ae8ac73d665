"""Each node's whole first-boot configuration, as an Ignition config."""
