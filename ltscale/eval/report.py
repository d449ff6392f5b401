"""Markdown + JSON reports and their figures.

``write_report`` writes into ``out_dir``: ``report.md`` (summary table, per-class table, the
noise-separation section when given), ``report.json`` (everything, NaN written as null) and the
PNG figures of ``ltscale.eval.plots``. A result that carries seed aggregates under ``"seeds"``
(``ltscale.eval.aggregate.merge_seeds``) is shown as "mean ± std".
"""

from __future__ import annotations

import math
from pathlib import Path

from ltscale.core.atomic import write_json_atomic, write_text_atomic
from ltscale.eval.aggregate import format_mean_std
from ltscale.eval.plots import plot_confusion, plot_groups, plot_per_class, plot_reliability

SUMMARY_KEYS = ("top1", "top5", "many", "medium", "few", "frequent", "medium_third", "rare",
                "balanced_acc")
SUMMARY_HEADER = ["model", "top-1", "top-5", "many", "medium", "few", "frequent ⅓", "medium ⅓",
                  "rare ⅓", "balanced acc"]
CALIBRATION_KEYS = ("ece", "ece_many", "ece_medium", "ece_few")
CALIBRATION_HEADER = ["model", "ECE", "ECE many", "ECE medium", "ECE few"]


def _pct(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def _cell(m: dict, key: str) -> str:
    value = m.get(key)
    if key == "balanced_acc" and value is None:
        value = m.get("mean_per_class")
    seeds = m.get("seeds")
    if seeds and value is not None:
        return format_mean_std(value, seeds["std"].get(key))
    return _pct(value)


def summary_rows(results: dict[str, dict], keys=SUMMARY_KEYS) -> list[list[str]]:
    rows = []
    for name, m in results.items():
        seeds = m.get("seeds")
        label = f"{name} ({seeds['n_seeds']} seeds)" if seeds else name
        rows.append([label] + [_cell(m, k) for k in keys])
    return rows


def _calibration_section(results: dict[str, dict]) -> list[str]:
    bins = next((len(m["reliability"]["all"]["count"]) for m in results.values()
                 if m.get("reliability")), None)
    if bins is None:
        return []
    return ["## Calibration", "",
            f"Expected calibration error (%, {bins} equal-width bins of the top softmax "
            "probability; Guo et al. 2017): the count-weighted mean gap between a bin's accuracy "
            "and its mean confidence; 0 is perfectly calibrated. Per shot group: over the test "
            "images whose true class is in the group. Reliability diagrams: reliability.png.",
            "", markdown_table(CALIBRATION_HEADER, summary_rows(results, CALIBRATION_KEYS)), ""]


BUDGET_HEADER = ["model", "images seen", "optimizer steps", "seconds"]


def _budget_section(results: dict[str, dict], note: str | None) -> list[str]:
    rows = [[name, f"{m['budget']['images']:,.0f}", f"{m['budget']['steps']:,.0f}",
             f"{m['budget']['seconds']:.0f}"] for name, m in results.items() if m.get("budget")]
    if not rows:
        return []
    return ["## Budget", "",
            "What training each model cost, all its stages together (pretraining + fine-tuning "
            "for the two-stage models): images seen (samples drawn by the training sampler; "
            "a sample's views count once, a cached feature counts as its image), optimizer steps, "
            "and wall-clock seconds of those stages on the machine that ran them (the "
            "feature-cache pass included)." + (f" {note}" if note else ""), "",
            markdown_table(BUDGET_HEADER, rows), ""]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return _json_safe(obj.tolist())
    return obj


def _thresholds(results: dict[str, dict]) -> tuple[int, int]:
    for m in results.values():
        t = m.get("shot_thresholds")
        if t:
            return int(t["many"]), int(t["few"])
    return 100, 20


def _group_names(m: dict) -> dict[int, str]:
    """Class → "shot group / third" (one pass over the groups, not one per class)."""
    shot, third = {}, {}
    for g, cs in (m.get("groups") or {}).items():
        for c in cs:
            shot.setdefault(c, g)
    for g, cs in (m.get("thirds") or {}).items():
        for c in cs:
            third.setdefault(c, g.replace("_third", "") + " ⅓")
    return {c: " / ".join(x for x in (shot.get(c, ""), third.get(c, "")) if x)
            for c in shot.keys() | third.keys()}


def _noise_section(noise: dict) -> list[str]:
    runs = {"": noise} if "auroc" in noise else noise
    md = ["## Noisy-vs-clean separation (training samples)", "",
          "Confidence σ* of each training sample (higher: more likely clean) against whether its "
          "observed label differs from its clean label; samples with an unknown clean label are "
          "left out. AUROC: chance that a clean sample scores above a noisy one (ties ½). "
          "Detection: flag a sample as noisy when σ* < threshold (1.0 means loss above τ), or "
          "flag the lowest-σ* samples, as many as are noisy.", ""]
    header = ["model", "samples", "noise rate", "AUROC", "rule", "flagged", "precision",
              "recall", "F1"]
    rows = []
    for name, n in runs.items():
        if n is None:
            continue
        auroc = "n/a" if n.get("auroc") is None else f"{n['auroc']:.4f}"
        for rule, key in ((f"σ* < {n['at_threshold']['threshold']:g}", "at_threshold"),
                          ("lowest σ* at the noise rate", "at_noise_rate")):
            d = n[key]
            rows.append([name or "—", str(n["samples"]), _pct(n["noise_rate"]), auroc, rule,
                         str(d["flagged"]), _pct(d["precision"]), _pct(d["recall"]),
                         _pct(d["f1"])])
        if n.get("auroc_reason"):
            md.append(f"- {name or 'AUROC'}: AUROC not computed: {n['auroc_reason']}")
        if n.get("excluded_unknown_clean"):
            md.append(f"- {name or 'samples'}: {n['excluded_unknown_clean']} samples with an "
                      "unknown clean label excluded")
    md += ["", markdown_table(header, rows), ""]
    return md


def write_report(out_dir: Path, title: str, results: dict[str, dict], classes: list[str],
                 train_counts: list[int], context: dict, noise: dict | None = None,
                 embedding: tuple | None = None) -> dict[str, Path]:
    """Write the report files into ``out_dir``; return their paths.

    Keys: ``md``, ``json``, ``per_class``, ``shots``, ``confusion`` (absent when no result has a
    confusion matrix), ``reliability`` (absent when no result has reliability bins); each path appears once, so callers may log ``paths.values()``. ``noise`` is one ``noise_separation`` dict
    or a mapping model name → dict. ``embedding``: (test features, their labels, the model's
    name) of one model, drawn as ``embedding.png`` (``ltscale.eval.embedding``; key ``embedding``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_counts = [int(c) for c in train_counts]
    many, few = _thresholds(results)
    md = [f"# {title}", ""]
    md += [f"- {k}: {v}" for k, v in context.items()]
    md += ["", f"Accuracy (%) on the test split. Many / medium / few: classes with >{many}, "
           f"{few}–{many} (inclusive), <{few} training images; frequent / medium / rare ⅓: the "
           "classes ranked by training images cut into three equal thirds (remainder to the "
           "front thirds, ties in class order). Training images are the training manifest's "
           "labeled samples by clean label when every clean label is known, else by observed "
           "label. Balanced acc: mean per-class recall over the classes in the test set. n/a: no "
           "class in the group.", ""]
    if any(m.get("seeds") for m in results.values()):
        md += ["Results over several seeds: mean ± sample standard deviation.", ""]
    md += [markdown_table(SUMMARY_HEADER, summary_rows(results)), ""]
    md += _budget_section(results, context.get("scratch budget"))
    md += _calibration_section(results)
    if noise:
        md += _noise_section(noise)
    md += ["## Per-class accuracy (%)", "", "Classes by training images, most first.", ""]
    first = next(iter(results.values()), {})
    header = ["class", "train images", "test images", "group"] + list(results)
    order = sorted(range(len(classes)), key=lambda c: -train_counts[c])
    test_counts = first.get("test_counts")
    names = _group_names(first)
    rows = [[classes[c], str(train_counts[c]), str(test_counts[c]) if test_counts else "",
             names.get(c, "")] + [_pct(m["per_class"][c]) for m in results.values()]
            for c in order]
    md += [markdown_table(header, rows), ""]

    paths = {"md": out_dir / "report.md", "json": out_dir / "report.json",
             "per_class": out_dir / "per_class.png", "shots": out_dir / "shots.png"}
    write_text_atomic(paths["md"], "\n".join(md))
    payload = {"title": title, "context": context, "classes": classes,
               "train_counts": train_counts, "results": results}
    if noise:
        payload["noise"] = noise
    write_json_atomic(paths["json"], _json_safe(payload))
    plot_per_class(paths["per_class"], results, train_counts, many, few)
    plot_groups(paths["shots"], results)
    main = next(((name, m) for name, m in results.items() if m.get("confusion") is not None),
                None)
    if main is not None:
        paths["confusion"] = plot_confusion(out_dir / "confusion.png", main[1]["confusion"],
                                            classes, main[0])
    if any(m.get("reliability") for m in results.values()):
        paths["reliability"] = plot_reliability(out_dir / "reliability.png", results)
    if embedding is not None:
        from ltscale.eval.embedding import plot_embedding

        features, labels, name = embedding
        groups = next((m["groups"] for m in results.values() if m.get("groups")), {})
        drawn = plot_embedding(out_dir / "embedding.png", features, labels, train_counts, classes,
                               groups, name)
        if drawn is not None:
            paths["embedding"] = drawn
    return paths
