"""Datasets: raw sources → immutable shards + index → manifests → loaders."""
