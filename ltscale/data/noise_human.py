"""Human label noise: CIFAR-10N / CIFAR-100N (Wei et al. 2022, "Learning with Noisy Labels
Revisited: A Study Using Real-World Human Annotations").

The public files are ``CIFAR-10_human.pt`` (keys ``clean_label``, ``aggre_label``,
``worse_label``, ``random_label1``, ``random_label2``, ``random_label3``) and
``CIFAR-100_human.pt`` (``clean_label``, ``noisy_label``, ``noisy_coarse_label``,
``clean_coarse_label``): a ``torch.save``d dict of numpy integer arrays with one label per
CIFAR training image, in the order of the python-version batches (``data_batch_1`` …
``data_batch_5`` for CIFAR-10, ``train`` for CIFAR-100). An ``.npz`` with the same keys is read
too.

Loading never runs code from the file. The public files hold numpy arrays, which plain
``torch.load(weights_only=True)`` refuses, and ``weights_only=False`` would run whatever the
pickle names; so a ``.pt`` goes through ``torch.load(weights_only=True)`` with only numpy's array
reconstruction, ``ndarray`` and the numeric dtypes allowed, for the duration of the call only
(``safe_globals``, not the process-wide ``add_safe_globals``), under both the numpy 1 and numpy 2
module names, since the public files were written with numpy 1. Before torch 2.6 (which first
allow-lists a global under a given name) the archive's pickle is read with the CIFAR source's
allow-list unpickler instead. An ``.npz`` is read with ``allow_pickle=False``.

A sample's position in the training set comes from its key: the cifar10 / cifar100 sources name
training image ``i`` ``train-{i:05d}``. The file's ``clean_label``, when present, must equal the
dataset's labels at those positions, which catches a file of the other dataset or another order.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np

from ltscale.core.errors import ManifestError
from ltscale.core.hashing import file_sha256
from ltscale.data.index import NPZ_ERRORS, ShardIndex
from ltscale.data.manifest_spec import HUMAN_LABEL_SETS, NoiseSpec
from ltscale.data.sources.cifar import unpickle_arrays

CIFAR_KINDS = ("cifar10", "cifar100")
_TRAIN_KEY = re.compile(r"^train-(\d+)$")


def _torch_safe_globals() -> list:
    reconstruct = np.zeros(1).__reduce__()[0]
    dtypes = [type(np.dtype(c)) for c in "bBhHiIlLqQefd?"]
    return [np.ndarray, np.dtype, reconstruct, *dtypes,
            (reconstruct, "numpy.core.multiarray._reconstruct"),
            (reconstruct, "numpy._core.multiarray._reconstruct")]


def _load_pt(path: Path):
    import torch

    version = tuple(int(x) for x in re.findall(r"\d+", torch.__version__)[:2])
    if version >= (2, 6):  # allow-listing under a given name (numpy 1's) came with torch 2.6
        from torch.serialization import safe_globals

        with safe_globals(_torch_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    # older torch: the zip's pickle, read with the CIFAR batches' allow-list unpickler
    with zipfile.ZipFile(path) as z:
        member = next((n for n in z.namelist() if n.endswith("/data.pkl")), None)
        if member is None:
            raise ValueError("no data.pkl in the archive")
        return unpickle_arrays(z.read(member), path)


def load_label_file(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a CIFAR-N label file (.pt or .npz) by key; never unpickles code."""
    if not path.is_file():
        raise ManifestError(f"human noise file not found: {path} (CIFAR-10_human.pt or "
                            "CIFAR-100_human.pt from the CIFAR-N release)")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                raw = {k: z[k] for k in z.files}
        else:
            raw = _load_pt(path)
    except (OSError, ValueError, EOFError, RuntimeError, *NPZ_ERRORS) as exc:
        reason = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ""
        raise ManifestError(f"{path}: not a readable CIFAR-N label file ({type(exc).__name__}: "
                            f"{reason}); it must be a torch.save'd dict of label arrays (or an "
                            ".npz with the same keys) holding nothing but numbers") from None
    except Exception as exc:  # pickle errors of every kind: the file is not what it claims
        raise ManifestError(f"{path}: not a readable CIFAR-N label file ({type(exc).__name__}); "
                            "it must hold a dict of integer label arrays only") from None
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: expected a dict of label arrays, found "
                            f"{type(raw).__name__}")
    out = {}
    for key, value in raw.items():
        if hasattr(value, "numpy"):  # a tensor
            value = value.numpy()
        out[str(key)] = np.asarray(value)
    return out


def dataset_kind(index: ShardIndex) -> str | None:
    """The source kind the dataset was built from (its card), or None when unknown."""
    if index.root is None:
        return None
    try:
        return json.loads((Path(index.root) / "card.json").read_text())["source"]["kind"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cifar_train_positions(index: ShardIndex, ids: np.ndarray) -> tuple[np.ndarray, int]:
    """(position in the CIFAR training set of every row of the index, -1 outside the train
    split; size of the training set), after checking that every row of ``ids`` has one."""
    kind = dataset_kind(index)
    if kind not in CIFAR_KINDS:
        raise ManifestError(f"human (CIFAR-N) noise needs a CIFAR-10 or CIFAR-100 dataset built "
                            f"by `ltscale data build cifar10|cifar100`; the dataset at "
                            f"{index.root} was built from {kind or 'an unknown source'}")
    if "train" not in index.splits:
        raise ManifestError(f"the dataset at {index.root} has no train split; CIFAR-N labels "
                            "cover the CIFAR training set")
    train = index.split_ids("train")
    outside = ids[~np.isin(ids, train)]
    if len(outside):
        raise ManifestError(f"human (CIFAR-N) noise labels the CIFAR training set only; sample "
                            f"{index.key[int(outside[0])]} is not in split 'train' (build the "
                            "manifest with split train)")
    keys = index.key
    pos = np.full(len(index), -1, dtype=np.int64)
    for row in train.tolist():
        match = _TRAIN_KEY.match(str(keys[row]))
        if match is None:
            raise ManifestError(f"sample key {keys[row]!r} of {index.root} does not name a CIFAR "
                                "training position (train-NNNNN, as the cifar sources write)")
        pos[row] = int(match.group(1))
    n = len(train)
    if not np.array_equal(np.sort(pos[train]), np.arange(n)):
        raise ManifestError(f"the training keys of {index.root} are not train-00000 … "
                            f"train-{n - 1:05d}; rebuild the dataset with `ltscale data build`")
    return pos, n


def human_labels(index: ShardIndex, spec: NoiseSpec, ids: np.ndarray) -> tuple[np.ndarray, dict]:
    """Observed labels of ``ids`` from the CIFAR-N file, and what to record about the file."""
    path = Path(spec.file)
    key = HUMAN_LABEL_SETS[spec.label_set]
    positions, n_train = cifar_train_positions(index, ids)
    arrays = load_label_file(path)
    if key not in arrays:
        other = " (a CIFAR-100N file?)" if "noisy_label" in arrays else (
            " (a CIFAR-10N file?)" if "aggre_label" in arrays else "")
        raise ManifestError(f"{path} has no key {key!r} for label set {spec.label_set}{other}; "
                            f"its keys: {', '.join(sorted(arrays)) or 'none'}")
    C = index.num_classes
    for name in dict.fromkeys([key, "clean_label"]):
        if name not in arrays:
            continue
        arr = arrays[name]
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise ManifestError(f"{path}: key {name!r} should be a 1-D array of integer labels, "
                                f"found shape {arr.shape} of {arr.dtype}")
        if len(arr) != n_train:
            raise ManifestError(f"{path}: key {name!r} holds {len(arr)} labels but the training "
                                f"set of {index.root} has {n_train} images (CIFAR-N files hold "
                                "50,000, one per CIFAR training image)")
        bad = np.flatnonzero((arr < 0) | (arr >= C))
        if len(bad):
            raise ManifestError(f"{path}: key {name!r} has label {int(arr[bad[0]])} at training "
                                f"position {int(bad[0])}, outside the dataset's {C} classes "
                                f"({len(bad)} such labels); is this the file of the other "
                                "CIFAR dataset?")
    if "clean_label" in arrays:
        train = index.split_ids("train")
        expected = np.empty(n_train, dtype=np.int64)
        expected[positions[train]] = index.label[train]
        differ = np.flatnonzero(arrays["clean_label"] != expected)
        if len(differ):
            raise ManifestError(f"{path}: key 'clean_label' disagrees with the labels of "
                                f"{index.root} at {len(differ)} training positions (first: "
                                f"{int(differ[0])}); the file belongs to another dataset or "
                                "another image order")
    observed = arrays[key][positions[ids]].astype(np.int64)
    record = {"kind": "human", "file": str(path), "key": key, "sha256": file_sha256(path)}
    return observed, record
