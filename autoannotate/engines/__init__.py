"""Execution engines beyond the local thread pools: ``ray_engine`` (Ray Data batch inference on a cluster)."""
