"""``ltscale compare``: runs of an MLflow experiment grouped by recipe keys, mean ± std over the
runs of each group (typically seeds), as a Markdown or CSV table, optionally laid out like a
paper's table (rows and columns chosen from keys), with plots.

Runs are the experiment's finished runs of one stage (``eval`` by default: its ``test/*``
metrics); their params are the flattened resolved recipe, so any dotted recipe key can group.
A key or metric no run has is refused, naming the ones that exist; a default metric no run has
is left out with a note. A group pools only replicates of one condition
(``ltscale.eval.conditions``): runs of different datasets or settings are never averaged
together. The store is only read: a SQLite store whose file does not exist is refused, not
created; plots replace only files ltscale wrote (``ltscale.core.owned``).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ltscale.core.errors import LtscaleError
from ltscale.eval.aggregate import format_metric, is_fraction
from ltscale.eval.conditions import CONDITION_TAGS, describe, differing

logger = logging.getLogger(__name__)

DEFAULT_METRICS = ("test/many", "test/medium", "test/few", "test/top1")
# shown by default too, when some run has them (runs made before calibration was measured do not)
DEFAULT_IF_PRESENT = ("test/ece", "budget/images", "budget/steps", "budget/seconds")


class CompareError(LtscaleError):
    """The experiment, a grouping key or a metric does not exist."""


@dataclass
class Group:
    key: tuple[str, ...]                     # the group-by values
    runs: list[str]                          # run ids
    mean: dict[str, float | None]
    std: dict[str, float | None]
    n: dict[str, int]


def experiment_id(client, experiment: str, uri: str) -> str:
    """The id of ``experiment``; an unknown name is refused, naming the experiments there."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise CompareError(f"no MLflow experiment {experiment!r} in {uri}; experiments there: "
                           f"{', '.join(names) or 'none'}")
    return exp.experiment_id


ALL_MODELS = "all"  # the stage name that selects every run that evaluated a model


def load_runs(experiment: str, uri: str, stage: str = "eval",
              statuses: tuple[str, ...] = ("FINISHED",)) -> list[dict]:
    """``{"id", "params", "metrics", "tags"}`` for each run of ``stage`` in ``experiment``;
    ``stage="all"``: every run that evaluated a model (eval, the baselines, self-training).
    A run's model name (tag ``ltscale.model``, e.g. "simsiam + la") is also its param
    ``model``, so it can group like a recipe key; so is the dataset's tag
    ``ltscale.index_hash``. A SQLite store whose file does not exist is refused, not created."""
    import mlflow

    from ltscale.track.store import require_store

    require_store(uri, "no runs to compare")
    client = mlflow.MlflowClient(uri)
    exp_id = experiment_id(client, experiment, uri)
    where = ("tags.`ltscale.model` != ''" if stage == ALL_MODELS
             else f"tags.`ltscale.stage` = '{stage}'")
    out, token = [], None
    while True:
        page = client.search_runs([exp_id], filter_string=where, max_results=1000,
                                  page_token=token)
        for r in page:
            if r.info.status not in statuses:
                continue
            tags = dict(r.data.tags)
            params = dict(r.data.params)
            if "ltscale.model" in tags:
                params["model"] = tags["ltscale.model"]
            params.update({t: tags[t] for t in CONDITION_TAGS if t in tags})
            out.append({"id": r.info.run_id, "params": params, "metrics": dict(r.data.metrics),
                        "tags": tags})
        token = page.token
        if not token:
            break
    if not out:
        what = "runs that evaluated a model" if stage == ALL_MODELS else f"runs of stage {stage!r}"
        raise CompareError(f"experiment {experiment!r} has no {'/'.join(statuses).lower()} "
                           f"{what}")
    return sorted(out, key=lambda r: r["id"])


def resolve_metrics(runs: list[dict], metrics: list[str] | None,
                    notes: list[str] | None = None) -> list[str]:
    """The metrics asked for (``many`` means ``test/many``); unknown ones are refused. By default
    those of ``DEFAULT_METRICS`` and ``DEFAULT_IF_PRESENT`` that some run has (the expected
    calibration error ``ece``; ``ece_many`` / ``ece_medium`` / ``ece_few`` on request): a
    default no run has (``many`` when no class has over ``eval.many_threshold`` training images)
    is left out with a note (logged, or added to ``notes``); none at all is refused."""
    have = sorted({k for r in runs for k in r["metrics"]})
    shown = [h for h in have if not re.match(r"test/class_\d+$", h)]
    if not metrics:
        absent = [m for m in DEFAULT_METRICS if m not in have]
        chosen = [m for m in DEFAULT_METRICS + DEFAULT_IF_PRESENT if m in have]
        if not chosen:
            raise CompareError(f"no run has the default metrics ({', '.join(map(_short, absent))}"
                               f"); name some with --metric; metrics: {', '.join(shown) or 'none'}")
        if absent:
            note = f"no run has {', '.join(map(_short, absent))}: left out of the table"
            if notes is None:
                logger.info(note)
            else:
                notes.append(note)
        return chosen
    out = []
    for m in metrics:
        name = m if m in have or "/" in m else f"test/{m}"
        if name not in have:
            raise CompareError(f"--metric {m}: no run has it; metrics: {', '.join(shown)}")
        out.append(name)
    return out


def same_value(param: str | None, want: str) -> bool:
    """A run's param text equals a wanted value (a reference cell's, a ``--where`` filter's);
    numbers by value (``1`` matches ``1.0``)."""
    if param is None or param == want:
        return param is not None
    try:
        return float(param) == float(want)
    except ValueError:
        return False


def filter_runs(runs: list[dict], where: list[str]) -> list[dict]:
    """The runs whose params match every ``KEY=VALUE`` of ``where`` (numbers by value: ``1``
    matches ``1.0``). An unknown key, or a filter that leaves no run, is refused, naming the
    values there are."""
    for item in where:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CompareError(f"--where {item!r}: write KEY=VALUE, e.g. manifest.noise=sym:0.4")
        _check_keys(runs, [key], option="--where")
        kept = [r for r in runs if same_value(r["params"].get(key), value)]
        if not kept:
            values = sorted({r["params"][key] for r in runs if key in r["params"]}, key=_order)
            raise CompareError(f"--where {item}: no run has this value; {key} takes "
                               f"{', '.join(values)}")
        runs = kept
    return runs


def _check_keys(runs: list[dict], keys: list[str], option: str = "--group-by") -> None:
    have = {k for r in runs for k in r["params"]}
    for key in keys:
        if key not in have:
            import difflib

            close = difflib.get_close_matches(key, sorted(have), n=5, cutoff=0.5)
            raise CompareError(f"{option} {key}: no run has this recipe key"
                               + (f"; did you mean {', '.join(close)}?" if close else ""))


def group_runs(runs: list[dict], group_by: list[str], metrics: list[str]) -> list[Group]:
    """One group per distinct combination of ``group_by`` values, sorted by them (numbers in a
    value by size: ``sym:0.2`` before ``sym:0.4``, ``exp:10`` before ``exp:100``); per metric
    the mean and sample std (ddof 1; None for one run) over the group's runs that have it.
    A group whose runs are not replicates of one condition is refused, naming the keys that
    differ (``ltscale.eval.conditions.split_keys`` gives the keys to add to ``group_by``)."""
    _check_keys(runs, group_by)
    buckets: dict[tuple, list[dict]] = {}
    for r in runs:
        buckets.setdefault(tuple(r["params"].get(k, "n/a") for k in group_by), []).append(r)
    groups = []
    for key, members in sorted(buckets.items(), key=lambda kv: [_order(v) for v in kv[0]]):
        mixed = differing(members)
        if mixed:
            where = ", ".join(f"{k}={v}" for k, v in zip(group_by, key)) or "all runs"
            raise CompareError(f"the runs of row {where} are not one condition: they differ in "
                               f"{describe(mixed)}; add these keys to --group-by or keep one "
                               "value with --where")
        mean, std, n = {}, {}, {}
        for m in metrics:
            vals = [r["metrics"][m] for r in members
                    if m in r["metrics"] and not math.isnan(r["metrics"][m])]
            n[m] = len(vals)
            mean[m] = float(np.mean(vals)) if vals else None
            std[m] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
        groups.append(Group(key, [r["id"] for r in members], mean, std, n))
    return groups


def _order(value: str) -> tuple:
    number = numeric(value)
    return (number is None, number or 0.0, str(value))


def _short(metric: str) -> str:
    return metric.removeprefix("test/")


def table_rows(groups: list[Group], group_by: list[str], metrics: list[str], fmt: str,
               digits: int = 2) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the grouped table: one row per group."""
    if fmt == "csv":
        header = [*group_by, "runs"] + [f"{_short(m)}_{s}" for m in metrics for s in ("mean", "std")]
        rows = [[*g.key, str(len(g.runs))] + [("" if v is None else repr(v))
                                              for m in metrics for v in (g.mean[m], g.std[m])]
                for g in groups]
    else:
        header = [*group_by, "runs"] + [_short(m) for m in metrics]
        rows = [[*g.key, str(len(g.runs))] + [format_metric(m, g.mean[m], g.std[m], digits)
                                              for m in metrics] for g in groups]
    return header, rows


def pivot_rows(groups: list[Group], group_by: list[str], rows_by: list[str], cols_by: list[str],
               metrics: list[str], fmt: str, digits: int = 2) -> tuple[list[str], list[list[str]]]:
    """A paper-style layout: one row per combination of ``rows_by`` values, one column per
    combination of ``cols_by`` values and metric."""
    for key in rows_by + cols_by:
        if key not in group_by:
            raise CompareError(f"--rows/--cols {key} must also be a --group-by key")
    idx = {k: group_by.index(k) for k in group_by}
    row_keys = list(dict.fromkeys(tuple(g.key[idx[k]] for k in rows_by) for g in groups))
    col_keys = list(dict.fromkeys(tuple(g.key[idx[k]] for k in cols_by) for g in groups))
    cells: dict[tuple, Group] = {}
    for g in groups:
        r = tuple(g.key[idx[k]] for k in rows_by)
        c = tuple(g.key[idx[k]] for k in cols_by)
        if (r, c) in cells:
            raise CompareError("--rows and --cols do not separate the groups: "
                               f"{dict(zip(group_by, g.key))} and "
                               f"{dict(zip(group_by, cells[(r, c)].key))} share a cell; add the "
                               "other --group-by keys to --rows or --cols")
        cells[(r, c)] = g
    header = [*rows_by] + [" ".join([*c, _short(m)]) for c in col_keys for m in metrics]
    out = []
    for r in row_keys:
        line = list(r)
        for c in col_keys:
            g = cells.get((r, c))
            for m in metrics:
                if g is None:
                    line.append("")
                elif fmt == "csv":
                    line.append("" if g.mean[m] is None else repr(g.mean[m]))
                else:
                    line.append(format_metric(m, g.mean[m], g.std[m], digits))
        out.append(line)
    return header, out


def render(header: list[str], rows: list[list[str]], fmt: str) -> str:
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
        return buf.getvalue()
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def numeric(value: str) -> float | None:
    """A key's value as a number for a curve: ``0.4`` → 0.4, ``sym:0.4`` → 0.4, ``exp:100`` →
    100 (the last number in the text); None when it holds none."""
    try:
        return float(value)
    except (TypeError, ValueError):
        found = re.findall(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?", str(value))
        return float(found[-1]) if found else None


def _save(fig, path: Path, force: bool, dpi: int = 110) -> Path:
    """The figure as a PNG at ``path``, written atomically, replacing only a file ltscale wrote
    (``ltscale.core.owned``) unless ``force``."""
    from ltscale.core.owned import owned_path
    from ltscale.eval.plots import _plt

    try:
        with owned_path(path, "--plots", force) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        _plt().close(fig)
    return path


def plot_bars(groups: list[Group], group_by: list[str], metrics: list[str], path: Path,
              force: bool = False) -> Path:
    """Grouped bars: one cluster per group, one bar per metric, ± std error bars."""
    from ltscale.eval.plots import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(groups) * max(1, len(metrics)) / 2), 3.6))
    width = 0.8 / max(1, len(metrics))
    x = np.arange(len(groups))
    for i, m in enumerate(metrics):
        scale = 100 if is_fraction(m) else 1
        means = [scale * (g.mean[m] or 0.0) for g in groups]
        errs = [scale * (g.std[m] or 0.0) for g in groups]
        ax.bar(x + (i - (len(metrics) - 1) / 2) * width, means, width, yerr=errs, capsize=2,
               label=_short(m))
    ax.set_xticks(x, [", ".join(g.key) for g in groups], rotation=20, ha="right", fontsize=8)
    calibration = any(_short(m).startswith("ece") for m in metrics)
    if not all(is_fraction(m) for m in metrics):
        ax.set_ylabel("value (fractions in %)")
    else:
        ax.set_ylabel("accuracy, ECE (%)" if calibration else "accuracy (%)")
    ax.set_title(" × ".join(group_by) or "all runs", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path, force)


def plot_curves(groups: list[Group], group_by: list[str], x_key: str, metric: str,
                path: Path, force: bool = False) -> Path:
    """``metric`` against the numeric value of ``x_key`` (e.g. the noise rate or γ), one line
    per combination of the other group-by keys, ± std bands."""
    from ltscale.eval.plots import _plt

    if x_key not in group_by:
        raise CompareError(f"--x {x_key} must also be a --group-by key")
    xi = group_by.index(x_key)
    lines: dict[tuple, list[tuple[float, Group]]] = {}
    for g in groups:
        xv = numeric(g.key[xi])
        if xv is None:
            raise CompareError(f"--x {x_key}: value {g.key[xi]!r} holds no number to plot")
        lines.setdefault(g.key[:xi] + g.key[xi + 1:], []).append((xv, g))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    for label, pts in lines.items():
        pts.sort(key=lambda p: p[0])
        xs = np.array([p[0] for p in pts])
        scale = 100 if is_fraction(metric) else 1
        ys = np.array([scale * (p[1].mean[metric] or 0.0) for p in pts])
        sd = np.array([scale * (p[1].std[metric] or 0.0) for p in pts])
        ax.plot(xs, ys, marker="o", label=", ".join(label) or _short(metric))
        ax.fill_between(xs, ys - sd, ys + sd, alpha=0.2)
    ax.set_xlabel(x_key)
    ax.set_ylabel(f"{_short(metric)} (%)" if is_fraction(metric) else _short(metric))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path, force)
