"""Summaries of a manifest (`ltscale manifest stats`) and of how two differ (`manifest diff`).

``manifest stats`` also reports byte-identical images among the manifest's samples (the same
image under different labels in one role, or in two roles, e.g. labeled and test) from the image
hashes of the dataset the manifest was built from, or says why it could not. ``manifest diff``
compares samples only between manifests of one index: a row id means nothing in another index.
"""

from __future__ import annotations

import numpy as np

from ltscale.data.duplicates import NO_HASHES, Duplicates, find_duplicates
from ltscale.data.manifest import ROLES, Manifest
from ltscale.data.noise import transition_counts
from ltscale.data.shots import FEW, MANY, shot_groups

DENSE_TRANSITION_MAX_CLASSES = 20   # printed as a matrix up to this many classes
JSON_TRANSITION_MAX_CLASSES = 200   # dense in the JSON up to this many (sparse counts always)
TOP_FLIPS = 10


def dataset_index(m: Manifest):
    """(index, "") of the dataset ``m`` was built from, or (None, why it cannot be used)."""
    from ltscale.core.errors import DataError
    from ltscale.data.index import ShardIndex

    root = m.header.get("dataset")
    if not root:
        return None, "the manifest names no dataset folder"
    try:
        index = ShardIndex.load(root)
    except DataError:
        return None, f"no readable dataset at {root}, the folder the manifest was built from"
    if index.content_hash() != m.header["index_hash"]:
        return None, (f"the dataset at {root} now has index {index.content_hash()}, not the "
                      f"manifest's {m.header['index_hash']}")
    return index, ""


def manifest_duplicates(m: Manifest, index=None, why_not: str = "") -> Duplicates:
    """Byte-identical images among the manifest's samples, by role (labels: the clean ones)."""
    hashes = index.image_hashes() if index is not None else None
    if index is not None and hashes is None:
        why_not = f"the index at {index.root} {NO_HASHES}"
    return find_duplicates(None if hashes is None else hashes[m.ids], m.role, ROLES, m.clean,
                           lambda rows: [str(k) for k in index.key[m.ids[rows]]], kind="role",
                           why_not=why_not or "no dataset index given")


def manifest_stats(m: Manifest, index=None, why_not: str = "") -> dict:
    """The manifest's summary; with the ``index`` it was built from, also its byte-identical
    images (``why_not``: why there is no index, said in the report instead)."""
    lab = m.mask("labeled")
    clean, observed = m.clean[lab], m.observed[lab]
    known = clean >= 0
    noisy = observed[known] != clean[known]
    # one pass over the samples (a mask per class would be O(n·C): minutes at iNat's 8,142)
    members = np.bincount(clean[known], minlength=m.num_classes)
    flipped = np.bincount(clean[known], weights=noisy, minlength=m.num_classes)
    per_class_noise = np.divide(flipped, members, out=np.zeros(m.num_classes),
                                where=members > 0).tolist()
    ref = m.reference_counts()
    groups = shot_groups(ref)
    out = {
        "hash": m.hash,
        "index_hash": m.header["index_hash"],
        "spec": m.header["spec"],
        "roles": {r: int((m.role == i).sum()) for i, r in enumerate(ROLES)},
        "samples": int(lab.sum()),
        "num_classes": m.num_classes,
        "class_counts_observed": m.class_counts("observed").tolist(),
        "class_counts_clean": m.class_counts("clean").tolist(),
        "clean_known": int(known.sum()),
        "imbalance_ratio": m.header["imbalance_ratio"],
        "shot_groups": {k: len(v) for k, v in groups.items()},
        "shot_counts_from": "clean" if known.all() else "observed",
        "shot_bounds": {"many": f"> {MANY}", "medium": f"{FEW}-{MANY}", "few": f"< {FEW}"},
        "noise_rate": float(noisy.mean()) if len(noisy) else 0.0,
        "noise_convention": m.header.get("noise_convention", ""),
        "noise_rate_per_class": per_class_noise,
        "unlabeled_pool": m.header.get("unlabeled_pool", {}),
    }
    if "noise_source" in m.header:
        out["noise_source"] = m.header["noise_source"]
    dup = manifest_duplicates(m, index, why_not)
    out["content_duplicates"] = dup.as_dict() | {"summary": dup.lines()}
    pairs = _pairs(m)
    if m.num_classes <= JSON_TRANSITION_MAX_CLASSES:  # dense C×C only while it is small
        out["transition_matrix"] = np.round(m.transition_matrix(), 4).tolist()
    out["transition_counts"] = pairs.tolist()  # [clean, observed, count]: the full matrix
    out["transition_summary"] = _transition_summary(pairs, m.num_classes)
    return out


def _pairs(m: Manifest) -> np.ndarray:
    lab = m.mask("labeled")
    return m.transition if m.transition is not None else transition_counts(
        m.clean[lab], m.observed[lab], m.num_classes)


def _transition_summary(pairs: np.ndarray, num_classes: int) -> dict:
    """The diagonal of T = P(observed | clean) over the classes that have samples, and the most
    frequent flips, from the sparse counts (a dense C×C matrix is 0.5 GB at 8,142 classes)."""
    rows = np.bincount(pairs[:, 0], weights=pairs[:, 2], minlength=num_classes) \
        if len(pairs) else np.zeros(num_classes)
    present = np.flatnonzero(rows > 0)
    kept = pairs[pairs[:, 0] == pairs[:, 1]] if len(pairs) else pairs
    diag_counts = np.bincount(kept[:, 0], weights=kept[:, 2], minlength=num_classes) \
        if len(kept) else np.zeros(num_classes)
    diag = diag_counts[present] / rows[present]
    flips = pairs[pairs[:, 0] != pairs[:, 1]] if len(pairs) else pairs
    top = flips[np.argsort(-flips[:, 2], kind="stable")[:TOP_FLIPS]] if len(flips) else flips
    return {"diagonal_mean": float(diag.mean()) if len(diag) else 1.0,
            "diagonal_min": float(diag.min()) if len(diag) else 1.0,
            "diagonal_min_class": int(present[np.argmin(diag)]) if len(diag) else -1,
            "distinct_flips": int(len(flips)),
            "top_flips": [{"clean": int(a), "observed": int(b), "count": int(n),
                           "rate": round(float(n / rows[a]), 4)} for a, b, n in top.tolist()]}


def format_stats(stats: dict) -> str:
    lines = [f"manifest {stats['hash']} (index {stats['index_hash']})",
             "roles: " + ", ".join(f"{r} {n}" for r, n in stats["roles"].items() if n),
             f"labeled {stats['samples']} over {stats['num_classes']} classes, imbalance ratio "
             f"{stats['imbalance_ratio']:.1f}; many/medium/few classes "
             f"{stats['shot_groups']['many']}/{stats['shot_groups']['medium']}/"
             f"{stats['shot_groups']['few']} (by {stats['shot_counts_from']} labels)",
             f"noise rate {stats['noise_rate']:.4f} ({stats['noise_convention']})"]
    pool = stats["unlabeled_pool"]
    if pool and any(pool.values()):
        lines.append(f"unlabeled pool: {pool['in_distribution']} in-distribution, "
                     f"{pool['out_of_distribution']} out-of-distribution")
    lines.append("class  observed  clean  noisy")
    for c, (o, k, n) in enumerate(zip(stats["class_counts_observed"],
                                      stats["class_counts_clean"],
                                      stats["noise_rate_per_class"])):
        lines.append(f"{c:5d} {o:9d} {k:6d} {n:6.3f}")
    source = stats.get("noise_source")
    if source:
        lines.append("noise source: " + "; ".join(
            f"{k.replace('_', ' ')} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in source.items() if k != "kind"))
    if "transition_matrix" in stats and stats["num_classes"] <= DENSE_TRANSITION_MAX_CLASSES:
        lines.append("transition matrix T[clean, observed]:")
        lines += ["  " + " ".join(f"{v:5.3f}" for v in row) for row in stats["transition_matrix"]]
    elif "transition_summary" in stats:
        s = stats["transition_summary"]
        lines.append(f"transition matrix ({stats['num_classes']} classes; the full matrix is in "
                     f"--json): diagonal mean {s['diagonal_mean']:.3f}, min {s['diagonal_min']:.3f} "
                     f"(class {s['diagonal_min_class']}); {s['distinct_flips']} distinct flips")
        lines += [f"  {f['clean']} -> {f['observed']}: {f['count']} ({f['rate']:.3f} of the "
                  "class)" for f in s["top_flips"]]
    lines += [f"content: {line}" for line in stats.get("content_duplicates", {}).get("summary", [])]
    return "\n".join(lines)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def manifest_diff(a: Manifest, b: Manifest) -> dict:
    """What changes from manifest ``a`` to ``b``: spec keys, samples per role, labels. Samples
    are compared only when both come from one index (``shared``, ``only_a``, ``only_b`` and the
    relabeled counts are None otherwise: row ids of two indexes name different images)."""
    same_index = a.header["index_hash"] == b.header["index_hash"]
    fa, fb = _flatten(a.header["spec"]), _flatten(b.header["spec"])
    spec = {k: [fa.get(k), fb.get(k)] for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}
    roles = {}
    for r in ROLES:
        ia, ib = a.ids[a.mask(r)], b.ids[b.mask(r)]
        if not (len(ia) or len(ib)):
            continue
        roles[r] = {"a": int(len(ia)), "b": int(len(ib)), "shared": None, "only_a": None,
                    "only_b": None}
        if same_index:
            roles[r] |= {"shared": int(len(np.intersect1d(ia, ib))),
                         "only_a": int(len(np.setdiff1d(ia, ib))),
                         "only_b": int(len(np.setdiff1d(ib, ia)))}
    shared = relabeled = None
    if same_index:
        la, lb = a.mask("labeled"), b.mask("labeled")
        both, pa, pb = np.intersect1d(a.ids[la], b.ids[lb], return_indices=True)
        shared = int(len(both))
        relabeled = int((a.observed[la][pa] != b.observed[lb][pb]).sum())
    ca, cb = a.class_counts(), b.class_counts()
    delta = (cb - ca) if len(ca) == len(cb) else None
    return {
        "a": a.hash, "b": b.hash,
        "index_hashes": [a.header["index_hash"], b.header["index_hash"]],
        "same_index": same_index,
        "spec": spec,
        "roles": roles,
        "labeled_shared": shared,
        "labeled_relabeled": relabeled,
        "noise_rate": [a.header["noise_rate"], b.header["noise_rate"]],
        "class_count_delta": delta.tolist() if delta is not None else None,
    }


def format_diff(d: dict) -> str:
    lines = [f"manifest {d['a']} -> {d['b']}"]
    if not d["same_index"]:
        ia, ib = d["index_hashes"]
        lines.append(f"samples not compared: the manifests were built from different indexes "
                     f"({ia} and {ib}), whose row ids name different images")
    if d["spec"]:
        lines.append("spec:")
        lines += [f"  {k}: {va!r} -> {vb!r}" for k, (va, vb) in d["spec"].items()]
    else:
        lines.append("spec: identical")
    for r, c in d["roles"].items():
        lines.append(f"{r}: {c['a']} -> {c['b']}" + (
            f" ({c['shared']} shared, {c['only_a']} only in a, {c['only_b']} only in b)"
            if d["same_index"] else ""))
    if d["same_index"]:
        lines.append(f"labeled samples in both with a different observed label: "
                     f"{d['labeled_relabeled']} of {d['labeled_shared']}")
    lines.append(f"noise rate {d['noise_rate'][0]:.4f} -> {d['noise_rate'][1]:.4f}")
    if d["class_count_delta"] is not None and any(d["class_count_delta"]):
        changed = [(c, v) for c, v in enumerate(d["class_count_delta"]) if v]
        shown = ", ".join(f"{c}:{v:+d}" for c, v in changed[:20])
        lines.append(f"labeled count change per class: {shown}"
                     f"{' ...' if len(changed) > 20 else ''}")
    return "\n".join(lines)
