"""Markdown + JSON reports and a per-class accuracy plot."""

from __future__ import annotations

from pathlib import Path

from ltscale.atomic import atomic_path, write_json_atomic, write_text_atomic


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def summary_rows(results: dict[str, dict]) -> list[list[str]]:
    rows = []
    for name, m in results.items():
        rows.append([name, _pct(m["top1"]), _pct(m.get("top5")), _pct(m["many"]),
                     _pct(m["medium"]), _pct(m["few"]), _pct(m["mean_per_class"])])
    return rows


SUMMARY_HEADER = ["model", "top-1", "top-5", "many", "medium", "few", "mean/class"]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_report(out_dir: Path, title: str, results: dict[str, dict], classes: list[str],
                 train_counts: list[int], context: dict) -> dict[str, Path]:
    """Write report.md, report.json and per_class.png into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = [f"# {title}", ""]
    md += [f"- {k}: {v}" for k, v in context.items()]
    md += ["", "Accuracy (%) on the balanced test split. Many / medium / few: classes with >100, "
           "20–100, <20 training images (clean labels of the training manifest); n/a when no "
           "class falls in a group.", "", markdown_table(SUMMARY_HEADER, summary_rows(results)), ""]
    md += ["## Per-class accuracy (%)", ""]
    header = ["class", "train images"] + list(results)
    rows = [[classes[c], str(train_counts[c])] + [_pct(m["per_class"][c]) for m in results.values()]
            for c in range(len(classes))]
    md += [markdown_table(header, rows), ""]
    paths = {"md": out_dir / "report.md", "json": out_dir / "report.json",
             "plot": out_dir / "per_class.png"}
    write_text_atomic(paths["md"], "\n".join(md))
    write_json_atomic(paths["json"], {"title": title, "context": context, "classes": classes,
                                      "train_counts": train_counts, "results": results})
    _plot(paths["plot"], results, classes, train_counts)
    return paths


def _plot(path: Path, results: dict[str, dict], classes: list[str], train_counts: list[int]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    order = np.argsort(train_counts)[::-1]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(classes)), 4))
    width = 0.8 / max(1, len(results))
    for i, (name, m) in enumerate(results.items()):
        ax.bar(np.arange(len(order)) + i * width, [100 * m["per_class"][c] for c in order],
               width, label=name)
    ax.set_xticks(np.arange(len(order)) + 0.4 - width / 2)
    ax.set_xticklabels([f"{classes[c]}\n({train_counts[c]})" for c in order], fontsize=7)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("per-class accuracy, classes by training frequency")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
