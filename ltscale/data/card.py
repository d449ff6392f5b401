"""The dataset card's own integrity: which of its fields changed after the build.

``card.json`` is written beside the index. Its ``field_hashes`` records, for every other top-level
field, the first 16 hex digits of the SHA-256 of the field's canonical JSON; ``check_card`` (run by
``ltscale data verify``) reports a field whose hash no longer matches, one added or removed, and,
for the fields the index determines (classes, label columns, per-split counts, image bytes and
formats, the index hash), the first value that differs from what the index gives, by its dotted
name (``splits.train.class_counts[2]``). Cards written before ``field_hashes`` existed are checked
against the index only.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np

HASHES = "field_hashes"


def split_summary(index) -> dict:
    """Per split: samples, class counts, unlabeled samples and known extra labels."""
    per_split = {}
    for split in index.splits:
        ids = index.split_ids(split)
        labels = index.label[ids]
        entry = {"samples": int(len(ids)),
                 "class_counts": np.bincount(labels[labels >= 0],
                                             minlength=index.num_classes).tolist(),
                 "unlabeled": int((labels < 0).sum())}
        for name in index.extra_classes:
            col = index.extra(name)[ids]
            entry[f"{name}_known"] = int((col >= 0).sum())
        per_split[split] = entry
    return per_split


def from_index(index) -> dict:
    """The card fields the index determines, as the card stores them (JSON values)."""
    return json.loads(json.dumps({
        "classes": index.classes,
        "extra_labels": index.extra_classes,
        "splits": split_summary(index),
        "image_bytes": int(index.size.sum()),
        "image_formats": dict(Counter(index.ext.tolist())),
        "index_hash": index.content_hash(),
    }))


def _hash(value) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def field_hashes(card: dict) -> dict[str, str]:
    return {k: _hash(v) for k, v in sorted(card.items()) if k != HASHES}


def _difference(found, expected, where: str):
    """(dotted name, found, expected) of the first place two JSON values differ, else None."""
    if isinstance(found, dict) and isinstance(expected, dict):
        for k in sorted(set(found) | set(expected), key=str):
            if k not in found or k not in expected:
                return (f"{where}.{k}", found.get(k, "(missing)"), expected.get(k, "(missing)"))
            d = _difference(found[k], expected[k], f"{where}.{k}")
            if d:
                return d
        return None
    if isinstance(found, list) and isinstance(expected, list) and len(found) == len(expected):
        for i, (a, b) in enumerate(zip(found, expected)):
            d = _difference(a, b, f"{where}[{i}]")
            if d:
                return d
        return None
    return None if found == expected else (where, found, expected)


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_card(card: dict, index) -> tuple[list[str], list[str]]:
    """(problems, notes): each problem names a field of the card that changed after the build."""
    problems, notes, changed = [], [], set()
    for name, expected in from_index(index).items():
        if name == "index_hash" or name not in card:
            continue  # verify compares the index hash itself; a removed field: field_hashes
        d = _difference(card[name], expected, name)
        if d:
            problems.append(f"field {d[0]} is {_short(d[1])} but the index gives "
                            f"{_short(d[2])}; the card was edited after the build")
            changed.add(name)
    recorded = card.get(HASHES)
    if not isinstance(recorded, dict):
        notes.append("card.json has no field hashes (written by an older ltscale): only the "
                     "fields the index determines were checked")
        return problems, notes
    found = field_hashes(card)
    for name in sorted(set(recorded) | set(found)):
        if name in changed:
            continue
        if name not in found:
            problems.append(f"field {name} was removed after the build")
        elif name not in recorded:
            problems.append(f"field {name} was added after the build")
        elif found[name] != recorded[name]:
            problems.append(f"field {name} changed after the build (its hash "
                            f"{recorded[name]} is now {found[name]})")
    return problems, notes
