"""Write a source into WebDataset tar shards plus an index and a dataset card.

Each sample is a group of tar members: ``<key>.<ext>`` (the encoded image, as the source gives
it), ``<key>.cls`` (the label as text, when known) and ``<key>.<name>.cls`` for further labels
(``noisy_label``, ``coarse_label``) — the layout the ``webdataset`` library reads.

The build is planned first (which samples go into which shard, from the byte sizes the source
reports), then the shards are written by parallel worker processes. Each shard is written to a
``.partial`` name and renamed when complete, inside a work directory ``.<out>.building`` next to
the output; an interrupted build keeps its finished shards and resumes with the rest when run
again with the same input. Only when every shard, the index and the card exist is the work
directory renamed to the output, so a failed build never leaves a half-written dataset where a
good one was expected. The same input gives byte-identical shards and index.

Only one build writes an output at a time: ``build_lock`` (``.<out>.lock`` beside it) refuses a
second, naming the first's pid and host. An operating-system error while writing names the file
being written (``write`` and ``fsync`` errors, e.g. no space left, name none by themselves). The
index records each image's hash as it is written; byte-identical images under different labels,
or in two splits, are logged as warnings when the build ends.

A source that already is a set of WebDataset shards (``in_place``) is indexed where it lies; only
the index and card are written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ltscale.core.atomic import write_json_atomic
from ltscale.core.errors import DataError
from ltscale.core.hashing import file_sha256
from ltscale.core.lock import build_lock
from ltscale.core.progress import bar as progress_bar
from ltscale.data.index import CARD_FILE, ShardIndex
from ltscale.data.ownership import check_output_path, owned_dataset, remove_owned
from ltscale.data.shard_index import assemble, card, image_digest, index_in_place
from ltscale.data.sources.base import NO_LABEL, SampleRef, Source, check_key
from ltscale.data.tarfmt import BLOCK, TarWriter, padded

logger = logging.getLogger(__name__)

DEFAULT_SHARD_BYTES = 1 << 30
_SIZE_PROBE = 64          # samples encoded to estimate sizes when a source cannot stat them
_MEMBER_OVERHEAD = 3 * BLOCK  # image header + label header + label data block


@dataclass
class _Job:
    name: str
    split: int
    refs: list[SampleRef]


def parse_size(text: str | int) -> int:
    """``1GB``, ``256MB``, ``64k`` or a plain byte count."""
    if isinstance(text, int):
        return text
    units = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "M": 1 << 20, "MB": 1 << 20,
             "G": 1 << 30, "GB": 1 << 30}
    t = str(text).strip().upper()
    num = t.rstrip("KMGB")
    try:
        value = int(float(num) * units[t[len(num):]])
    except (ValueError, KeyError):
        raise DataError(f"shard size {text!r} not understood; use e.g. 1GB, 256MB or 65536") from None
    if value <= 0:
        raise DataError(f"shard size must be positive, got {text!r}")
    return value


def build_shards(source: Source, out: str | Path, *, source_kind: str, source_path: str,
                 shard_bytes: int = DEFAULT_SHARD_BYTES, workers: int = 1,
                 overwrite: bool = False, progress: bool = True,
                 inputs: list[str | Path] = ()) -> ShardIndex:
    """Write every split of ``source`` into shards under ``out``; return the index.

    ``out`` may not be, contain or lie inside ``source_path`` or any of ``inputs`` (further
    folders the source reads, e.g. ``images=ROOT``). An existing ``out`` is replaced only with
    ``overwrite`` and only when it is a dataset ltscale wrote (``owned_dataset``)."""
    out = Path(out)
    check_output_path(out, [source_path, *inputs], "--out")
    out.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(out):
        index = _build(source, out, source_kind=source_kind, source_path=source_path,
                       shard_bytes=shard_bytes, workers=workers, overwrite=overwrite,
                       progress=progress, inputs=inputs)
    from ltscale.data.duplicates import index_duplicates

    found = index_duplicates(index)
    for line in found.lines() if found.found else ():
        logger.warning("%s: %s", out, line)
    return index


def _build(source: Source, out: Path, *, source_kind: str, source_path: str, shard_bytes: int,
           workers: int, overwrite: bool, progress: bool, inputs) -> ShardIndex:
    if out.exists() or out.is_symlink():
        problem = owned_dataset(out)
        if problem is not None:
            raise DataError(f"{out} already exists and {problem}; ltscale only replaces a "
                            "dataset it wrote itself. Choose another --out (nothing was changed)")
        if not overwrite:
            raise DataError(f"{out} already exists (an ltscale dataset); pass --overwrite to "
                            "replace it (the old dataset stays in place until the new one is "
                            "complete)")
    work = out.with_name(f".{out.name}.building")
    _check_work_dir(work)
    splits = source.splits()
    refs = {s: source.refs(s) for s in splits}
    _validate(source, refs)
    if getattr(source, "in_place", False):
        in_place = [Path(p) for p in source.in_place]
        for shard in in_place:  # the source's own tars must never be touched by the output
            check_output_path(out, [shard], "--out")
        if work.exists():
            shutil.rmtree(work)
        work.mkdir()
        with naming(work / _PLAN_FILE):
            write_json_atomic(work / _PLAN_FILE, {"digest": "in-place", "shards": len(in_place)})
        index, shas = index_in_place(source, refs)
        shard_info = [_shard_entry(Path(n), n, shas.get(n)) for n in index.shards]
    else:
        jobs = _plan(source, refs, shard_bytes)
        _prepare_work_dir(work, jobs, source_kind, source_path, shard_bytes)
        results = _run_jobs(source, jobs, work, workers, progress)
        index = assemble(source, jobs, results)
        shard_info = [_shard_entry(work / j.name, j.name, results[i][2])
                      for i, j in enumerate(jobs)]
    with naming(work / "index.npz"):
        index.save(work)
    with naming(work / CARD_FILE):
        write_json_atomic(work / CARD_FILE,
                          card(source, index, shard_info, source_kind, source_path))
    (work / _PLAN_FILE).unlink(missing_ok=True)
    if out.exists():
        problem = owned_dataset(out)  # checked again: nothing of the user's may have moved in
        if problem is not None:
            raise DataError(f"{out} {problem}; the new dataset is left in {work}")
        trash = out.with_name(f".{out.name}.replaced-{os.getpid()}")
        os.replace(out, trash)
        os.replace(work, out)
        remove_owned(trash)
    else:
        os.replace(work, out)
    return ShardIndex.load(out)


@contextlib.contextmanager
def naming(path: Path):
    """Give an ``OSError`` that names no file (``write``/``fsync``: no space, quota, I/O
    error) the file being written, so the one-line error says where."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            raise type(exc)(exc.errno, exc.strerror or str(exc) or type(exc).__name__,
                            str(path)) from exc
        raise


def _check_work_dir(work: Path) -> None:
    """The build's work folder is reused or removed only when it holds a build plan."""
    if (work.exists() or work.is_symlink()) and (
            work.is_symlink() or not work.is_dir()
            or (any(work.iterdir()) and not (work / _PLAN_FILE).exists())):
        raise DataError(f"{work} exists but is not an unfinished ltscale build (no "
                        f"{_PLAN_FILE}); move it away (nothing was changed)")


# --- planning ----------------------------------------------------------------------------------
def _validate(source: Source, refs: dict[str, list[SampleRef]]) -> None:
    n_classes = len(source.classes)
    extra_n = {k: len(v) if v else n_classes for k, v in source.extra_labels.items()}
    seen: dict[str, str] = {}
    for split, rows in refs.items():
        for ref in rows:
            where = f"sample {ref.key} ({ref.path or split})"
            check_key(ref.key, where)
            if ref.key in seen:
                raise DataError(f"duplicate key {ref.key!r}: {ref.path or split} and "
                                f"{seen[ref.key]} map to the same key; keys must be unique")
            seen[ref.key] = ref.path or split
            if not NO_LABEL <= ref.label < n_classes:
                raise DataError(f"{where}: label {ref.label} is outside the {n_classes} classes "
                                "of the source")
            for name, value in ref.extra:
                if name not in extra_n or not NO_LABEL <= value < extra_n[name]:
                    raise DataError(f"{where}: {name}={value} is not a valid label "
                                    f"(columns {sorted(extra_n)})")


def _plan(source: Source, refs: dict[str, list[SampleRef]], shard_bytes: int) -> list[_Job]:
    jobs: list[_Job] = []
    for split_no, split in enumerate(refs):
        rows = refs[split]
        if not rows:
            continue
        probe = [r for r in rows[:_SIZE_PROBE] if r.size is None]
        guess = int(np.mean([len(source.read(r)) for r in probe])) if probe else 0
        chunk: list[SampleRef] = []
        used, count = 0, 0
        for ref in rows:
            cost = padded(ref.size if ref.size is not None else guess) + _MEMBER_OVERHEAD
            if chunk and used + cost > shard_bytes:
                jobs.append(_Job(f"{split}-{count:06d}.tar", split_no, chunk))
                chunk, used, count = [], 0, count + 1
            chunk.append(ref)
            used += cost
        jobs.append(_Job(f"{split}-{count:06d}.tar", split_no, chunk))
    return jobs


_PLAN_FILE = "build-plan.json"


def _plan_digest(jobs: list[_Job], kind: str, path: str, shard_bytes: int) -> str:
    h = hashlib.sha256(json.dumps([kind, str(path), shard_bytes]).encode())
    for job in jobs:
        h.update(job.name.encode())
        for r in job.refs:
            h.update(f"{r.key}\0{r.ext}\0{r.label}\0{r.extra}\0{r.size}\n".encode())
    return h.hexdigest()


def _prepare_work_dir(work: Path, jobs: list[_Job], kind: str, path: str, shard_bytes: int) -> None:
    """Reuse the finished shards of an interrupted build of the same plan; else start afresh."""
    digest = _plan_digest(jobs, kind, path, shard_bytes)
    plan_file = work / _PLAN_FILE
    if work.exists():
        try:
            same = json.loads(plan_file.read_text())["digest"] == digest
        except (OSError, ValueError, KeyError):
            same = False
        if not same:
            shutil.rmtree(work)
    work.mkdir(exist_ok=True)
    for stale in work.glob("*.partial"):
        stale.unlink()
    with naming(plan_file):
        write_json_atomic(plan_file, {"digest": digest, "shards": len(jobs)})


# --- writing -----------------------------------------------------------------------------------
_WORKER: dict = {}


def _member_names(ref: SampleRef) -> list[str]:
    names = [f"{ref.key}.{ref.ext}"]
    if ref.label != NO_LABEL:
        names.append(f"{ref.key}.cls")
    names += [f"{ref.key}.{k}.cls" for k, v in ref.extra if v != NO_LABEL]
    return names


def _write_job(i: int) -> tuple[int, list[tuple[int, int, bytes]], str]:
    source, job, work = _WORKER["source"], _WORKER["jobs"][i], _WORKER["work"]
    final = work / job.name
    if final.exists():  # finished by an earlier, interrupted run of the same plan
        spans = _reuse(final, job)
        if spans is not None:
            return i, spans, file_sha256(final)
        final.unlink()
    tmp = work / (job.name + ".partial")
    with naming(tmp):
        writer = TarWriter(tmp)
    spans = []
    try:
        for ref in job.refs:
            data = source.read(ref)
            with naming(tmp):
                spans.append((writer.add(f"{ref.key}.{ref.ext}", data), len(data),
                              image_digest(data)))
                if ref.label != NO_LABEL:
                    writer.add(f"{ref.key}.cls", str(ref.label).encode())
                for name, value in ref.extra:
                    if value != NO_LABEL:
                        writer.add(f"{ref.key}.{name}.cls", str(value).encode())
        with naming(tmp):
            writer.close()  # fsyncs
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return i, spans, writer.sha256


def _reuse(path: Path, job: _Job) -> list[tuple[int, int, bytes]] | None:
    """Offsets, sizes and digests of the images of a finished shard if it holds exactly the
    planned members, else None."""
    import tarfile

    expected = [n for ref in job.refs for n in _member_names(ref)]
    images = {f"{ref.key}.{ref.ext}" for ref in job.refs}
    try:
        with tarfile.open(path, "r:") as tar:
            members = tar.getmembers()
            if [m.name for m in members] != expected:
                return None
            return [(m.offset_data, m.size, image_digest(tar.extractfile(m).read()))
                    for m in members if m.name in images]
    except (tarfile.TarError, OSError):
        return None


def _plain_signals() -> None:
    """A shard writer process dies on SIGTERM and leaves Ctrl-C to its parent. Forked workers
    inherit the CLI's handlers (SIGTERM raises like Ctrl-C); with them, the pool's own SIGTERM
    at shutdown could raise inside a worker that held the task queue's lock, and its sibling
    waited for that lock forever."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_jobs(source: Source, jobs: list[_Job], work: Path, workers: int, progress: bool):
    _WORKER.update(source=source, jobs=jobs, work=work)
    results: dict[int, tuple] = {}
    total = sum(len(j.refs) for j in jobs)
    with progress_bar(total=total, enabled=progress, desc="shards", unit="img") as pbar:
        try:
            if workers <= 1 or len(jobs) == 1:
                for i in range(len(jobs)):
                    results[i] = _write_job(i)[1:]
                    pbar.update(len(jobs[i].refs))
            else:
                ctx = multiprocessing.get_context("fork")
                with ctx.Pool(min(workers, len(jobs)), initializer=_plain_signals) as pool:
                    for i, spans, sha in pool.imap_unordered(_write_job, range(len(jobs))):
                        results[i] = (spans, sha)
                        pbar.update(len(jobs[i].refs))
        finally:
            _WORKER.clear()
    return [(jobs[i].name, *results[i]) for i in range(len(jobs))]


def _shard_entry(path: Path, name: str, sha: str | None = None) -> dict:
    if not path.exists():
        raise DataError(f"shard {path} does not exist")
    return {"name": name, "bytes": path.stat().st_size, "sha256": sha or file_sha256(path)}
