"""`ltscale compare`: an experiment's runs grouped by recipe keys, paper layouts, plots, and the
paper's figures beside ours (``--reference``)."""

from __future__ import annotations

import argparse
import logging

from ltscale.core.errors import LtscaleError

logger = logging.getLogger(__name__)


def add_parser(sub) -> argparse.ArgumentParser:
    cp = sub.add_parser("compare", help="runs of an experiment grouped by recipe keys, "
                        "mean ± std over seeds")
    cp.add_argument("experiment")
    cp.add_argument("--group-by", nargs="+", default=[], metavar="KEY",
                    help="recipe keys to group by (e.g. finetune.loss.name manifest.noise); "
                    "'model' is the evaluated model's name (e.g. 'simsiam + la')")
    cp.add_argument("--metric", nargs="+", default=None, metavar="NAME",
                    help="metrics (default: many medium few top1, and ece when runs have it; "
                    "also ece_many ece_medium ece_few; test/ may be left out)")
    cp.add_argument("--where", nargs="+", default=[], metavar="KEY=VALUE",
                    help="only the runs with these recipe values (e.g. manifest.imbalance=exp:10)")
    cp.add_argument("--format", default="md", choices=["md", "csv"])
    cp.add_argument("--rows", nargs="+", default=None, metavar="KEY",
                    help="paper layout: keys whose values make the rows")
    cp.add_argument("--cols", nargs="+", default=None, metavar="KEY",
                    help="paper layout: keys whose values make the columns")
    cp.add_argument("--stage", default="eval",
                    help="runs of this stage (default: eval); 'all': every run that evaluated a "
                    "model, the baselines' and self-training's included (group them by 'model')")
    cp.add_argument("--plots", metavar="DIR", help="write grouped bars (and curves with --x) "
                    "as PNG into DIR")
    cp.add_argument("--x", default=None, metavar="KEY",
                    help="numeric key for curves (e.g. manifest.noise, sym:0.4 → 0.4)")
    cp.add_argument("--reference", metavar="RECIPE",
                    help="the recipe's reference figures (the paper's) beside the matching runs")
    cp.add_argument("--out", metavar="FILE", help="also write the table to FILE")
    cp.add_argument("--force", action="store_true",
                    help="let --out / --plots replace files ltscale did not write (by default "
                    "only files listed in the folder's .ltscale-written.json are replaced)")
    cp.add_argument("--tracking-uri", default=None,
                    help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    cp.set_defaults(func=cmd_compare)
    return cp


def cmd_compare(args):
    from pathlib import Path

    from ltscale.eval import compare as c
    from ltscale.track import default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri()
    if args.reference:
        return _compare_reference(args, uri)
    runs = c.filter_runs(_read_runs(uri, c.load_runs, args.experiment, uri, stage=args.stage),
                         args.where)
    notes: list[str] = []  # logged once every output is known to be writable
    metrics = c.resolve_metrics(runs, args.metric, notes)
    group_by = list(args.group_by)
    for key in (args.rows or []) + (args.cols or []) + ([args.x] if args.x else []):
        if key not in group_by:
            group_by.append(key)
    group_by += _condition_keys(runs, group_by, bool(args.rows or args.cols), notes)
    plots = {}
    if args.plots:
        out = Path(args.plots)
        plots = {"bars": out / "compare_bars.png"}
        for m in metrics if args.x else []:
            plots[m] = out / f"compare_{m.replace('/', '_')}_vs_{args.x.replace('.', '_')}.png"
    _check_outputs(uri, args, [(args.out, "--out")] + [(p, "--plots") for p in plots.values()])
    for note in notes:
        logger.info(note)
    groups = c.group_runs(runs, group_by, metrics)
    if args.rows or args.cols:
        header, rows = c.pivot_rows(groups, group_by, args.rows or [], args.cols or [], metrics,
                                    args.format)
    else:
        header, rows = c.table_rows(groups, group_by, metrics, args.format)
    _emit(c.render(header, rows, args.format), args.out, args.force)
    for m, path in plots.items():
        if m == "bars":
            print(f"plot: {c.plot_bars(groups, group_by, metrics, path, args.force)}")
        else:
            print(f"plot: {c.plot_curves(groups, group_by, args.x, m, path, args.force)}")
    return 0


def _read_runs(uri: str, load, *args, **kwargs) -> list[dict]:
    """``load(*args, **kwargs)`` from the store ``uri``, checked first (a server that does not
    answer, a missing, damaged or non-SQLite file: one line within seconds); an MLflow or
    database error while reading is one line naming the store too."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    from ltscale.track.store import check_readable, unreadable

    check_readable(uri, "no runs to compare")
    try:
        return load(*args, **kwargs)
    except (MlflowException, SQLAlchemyError) as exc:
        raise unreadable(uri, exc) from None


def _condition_keys(runs: list[dict], group_by: list[str], pivot: bool,
                    notes: list[str]) -> list[str]:
    """The keys that must also separate the rows, so that each pools only replicates of one
    condition (``ltscale.eval.conditions``): added with a note to a plain table; a paper
    layout (--rows/--cols), whose cells they would not fit, is refused naming them."""
    from ltscale.eval.compare import CompareError
    from ltscale.eval.conditions import describe, split_keys

    extra = split_keys(runs, group_by)
    if extra and pivot:
        raise CompareError(f"--rows/--cols: the runs of one cell are not one condition: they "
                           f"differ in {describe(extra)}; add these keys to --rows or --cols, "
                           "or keep one value with --where")
    if extra:
        notes.append(f"rows also split by {describe(extra)}: a row pools only runs of one "
                     "condition (seeds)")
    return list(extra)


def _check_outputs(uri: str, args, outputs: list) -> None:
    """Before anything is written: no output is an input (the tracking store, the recipe), and
    each replaces only a file ltscale wrote, unless --force (``ltscale.core.owned``)."""
    import os

    from ltscale.core.owned import check_replace
    from ltscale.track.store import sqlite_file

    inputs = {"the tracking store": sqlite_file(uri), "the recipe": args.reference}
    for path, option in outputs:
        if not path:
            continue
        for what, given in inputs.items():
            if given and os.path.realpath(path) == os.path.realpath(given):
                raise LtscaleError(f"{option} {path} is {what} this command reads; name another "
                                   "file (nothing was changed)")
        check_replace(path, option, args.force)


def _compare_reference(args, uri: str) -> int:
    """Paper vs ours for the recipe's reference cells (`compare EXPERIMENT --reference RECIPE`)."""
    from ltscale.config.loading import load_recipe
    from ltscale.eval import compare as c
    from ltscale.eval import reference as ref

    recipe = load_recipe(args.reference)
    if recipe.reference is None:
        raise LtscaleError(f"{args.reference} has no reference: section (the paper's figures)")
    runs = _read_runs(uri, ref.load_model_runs, args.experiment, uri)
    _check_outputs(uri, args, [(args.out, "--out")])
    rows = ref.reference_rows(recipe, runs)
    print(f"{recipe.reference.paper}, {recipe.reference.table}: paper vs ours "
          f"(experiment {args.experiment})")
    if recipe.reference.note:
        print(f"note: {recipe.reference.note}")
    _emit(c.render(ref.HEADER, rows, args.format), args.out, args.force)
    return 0


def _emit(text: str, out: str | None, force: bool = False) -> None:
    """Print the table; with ``--out`` also write it (atomically) to that file, replacing only a
    file ltscale wrote unless ``force``."""
    if out:
        from ltscale.core.owned import owned_path

        with owned_path(out, "--out", force) as tmp:
            tmp.write_text(text, encoding="utf-8")
    print(text, end="")
