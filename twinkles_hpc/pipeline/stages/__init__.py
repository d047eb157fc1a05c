"""One module per stage, in pipeline order (pipeline/registry.py lists them)."""
