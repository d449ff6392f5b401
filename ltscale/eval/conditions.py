"""Which runs are replicates of one condition, so that ``ltscale compare`` may pool them.

A row of ``compare`` is a condition; its mean ± std is over replicates only. A run's condition is
its dataset (tag ``ltscale.index_hash``, the hash of the shard index, which ``load_runs`` also
gives as a param) and every recipe setting among its params (the flattened resolved recipe, the
manifest spec included; ``model`` too) except

- the replicate seeds ``REPLICATE_KEYS``: the training seed and the manifest draw;
- where and how it ran: ``name``, ``output_dir``, ``device``, ``threads``, ``tracking.*``,
  ``sweep.*``, ``reference.*``, loader workers, prefetching and checks, checkpoint cadence,
  report-only ``eval`` options;
- paths the index hash stands for: ``data.shards``, ``data.source.path``,
  ``data.source.options.*``, ``manifest.file`` (its spec is in the ``manifest.*`` params).

Runs that differ in any other key (a run without the key has a value of its own) are different
conditions and are never pooled.
"""

from __future__ import annotations

import re

CONDITION_TAGS = ("ltscale.index_hash",)
REPLICATE_KEYS = frozenset({"seed", "seeds", "manifest.seed"})
_NOT_CONDITION = re.compile(
    r"^(name|output_dir|device|threads|data\.shards|data\.source\.path|manifest\.file"
    r"|data\.loader\.(prefetch|pin_memory|check|urls)|eval\.(embedding_plot|class_metrics_max))$"
    r"|^(tracking|sweep|reference|data\.source\.options)(\.|$)"
    r"|(^|\.)(workers|checkpoint_every|keep_checkpoints)$")
MISSING = "n/a"


def is_condition_key(key: str) -> bool:
    """Whether runs that differ in ``key`` are different conditions (see the module doc)."""
    return key not in REPLICATE_KEYS and not _NOT_CONDITION.search(key)


def differing(runs: list[dict]) -> dict[str, list[str]]:
    """The condition keys whose values differ among ``runs``, each with its values."""
    keys = sorted({k for r in runs for k in r["params"] if is_condition_key(k)})
    out = {}
    for key in keys:
        values = {r["params"].get(key, MISSING) for r in runs}
        if len(values) > 1:
            out[key] = sorted(values)
    return out


def split_keys(runs: list[dict], group_by: list[str]) -> dict[str, list[str]]:
    """The condition keys, other than ``group_by``, that differ among the runs of one group
    (runs with the same ``group_by`` values), with their values: the keys that must also
    separate the rows."""
    buckets: dict[tuple, list[dict]] = {}
    for r in runs:
        buckets.setdefault(tuple(r["params"].get(k, MISSING) for k in group_by), []).append(r)
    out: dict[str, set[str]] = {}
    for members in buckets.values():
        for key, values in differing(members).items():
            if key not in group_by:
                out.setdefault(key, set()).update(values)
    return {k: sorted(v) for k, v in sorted(out.items())}


def describe(keys: dict[str, list[str]], limit: int = 4) -> str:
    """``key (v1, v2), key2 (…)`` for a one-line message; values cut after ``limit``."""
    def values(vs: list[str]) -> str:
        return ", ".join(v[:40] for v in vs[:limit]) + (", …" if len(vs) > limit else "")
    return "; ".join(f"{k} ({values(v)})" for k, v in keys.items())
