"""ltscale's version, recorded in shard indexes and run tags (pyproject.toml carries the same)."""

__version__ = "0.1.0"
