"""Versioned artifacts in a run directory: manifests and atomic publishing (manifests), the run and run.json (run),
Grow shards (shards).
"""
