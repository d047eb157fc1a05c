"""Test seams: fault injection for the restart tests. Production modules never import this package; the
CLI installs it only when TWINKLES_HPC_FAULT is set."""
