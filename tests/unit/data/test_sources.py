"""Every source adapter on a miniature copy written in its exact public format."""

import io
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from ltscale.core.errors import DataError
from ltscale.data.shards import build_shards
from ltscale.data.sources import NO_LABEL, iter_samples, open_source


def jpeg(seed: int, size: int = 8) -> bytes:
    px = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="JPEG")
    return buf.getvalue()


def put(root, rel, seed=0):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg(seed))
    return path


# --- CIFAR ---------------------------------------------------------------------------------------
def _pickle(path, obj):
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_cifar10(root, per_batch=3):
    root.mkdir()
    rng = np.random.default_rng(0)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
             "truck"]
    _pickle(root / "batches.meta", {b"num_cases_per_batch": per_batch,
                                    b"label_names": [n.encode() for n in names], b"num_vis": 3072})
    batches = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(batches):
        data = rng.integers(0, 255, (per_batch, 3072), dtype=np.uint8)
        _pickle(root / name, {b"batch_label": name.encode(), b"labels": [(b + i) % 10 for i in
                                                                          range(per_batch)],
                              b"data": data, b"filenames": [f"img_{b}_{i}.png".encode()
                                                            for i in range(per_batch)]})
    return root


def write_cifar100(root):
    root.mkdir()
    rng = np.random.default_rng(1)
    fine = [f"fine{i}" for i in range(100)]
    _pickle(root / "meta", {b"fine_label_names": [n.encode() for n in fine],
                            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    for name, n in (("train", 12), ("test", 4)):
        labels = list(range(0, 100, 100 // n))[:n]
        _pickle(root / name, {b"filenames": [f"f{i}.png".encode() for i in range(n)],
                              b"batch_label": name.encode(), b"fine_labels": labels,
                              b"coarse_labels": [f // 5 for f in labels],
                              b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8)})
    return root


def test_cifar10_reads_every_batch_and_round_trips_pixels(tmp_path):
    root = write_cifar10(tmp_path / "cifar-10-batches-py")
    src = open_source("cifar10", root)
    assert src.splits() == ["train", "test"] and src.classes[9] == "truck"
    train, test = src.refs("train"), src.refs("test")
    assert len(train) == 15 and len(test) == 3
    assert [r.label for r in train[3:6]] == [1, 2, 3]  # data_batch_2 starts at label 1
    batch = pickle.loads((root / "data_batch_2").read_bytes(), encoding="bytes")
    png = src.read(train[4])
    pixels = np.array(Image.open(io.BytesIO(png)))
    np.testing.assert_array_equal(pixels, batch[b"data"][1].reshape(3, 32, 32).transpose(1, 2, 0))
    assert train[4].path == "data_batch_2:1:img_1_1.png"


def test_cifar100_keeps_coarse_labels(tmp_path):
    src = open_source("cifar100", write_cifar100(tmp_path / "cifar-100-python"))
    assert len(src.classes) == 100 and len(src.extra_labels["coarse_label"]) == 20
    ref = src.refs("train")[5]
    assert dict(ref.extra)["coarse_label"] == ref.label // 5
    index = build_shards(src, tmp_path / "ds", source_kind="cifar100", source_path="x",
                         progress=False)
    np.testing.assert_array_equal(index.extra("coarse_label"), index.label // 5)


def test_cifar_bad_inputs(tmp_path):
    root = write_cifar10(tmp_path / "c10")
    with pytest.raises(DataError, match="CIFAR10 files; build it with kind cifar10"):
        open_source("cifar100", root)
    (root / "data_batch_3").write_bytes((root / "data_batch_3").read_bytes()[:500])
    with pytest.raises(DataError, match="data_batch_3: truncated or corrupt pickle"):
        open_source("cifar10", root)
    (root / "data_batch_3").unlink()
    with pytest.raises(DataError, match="batch file not found: .*data_batch_3"):
        open_source("cifar10", root)


def test_cifar_label_out_of_range_names_file_and_row(tmp_path):
    root = write_cifar10(tmp_path / "c10")
    batch = pickle.loads((root / "test_batch").read_bytes(), encoding="bytes")
    batch[b"labels"][2] = 10
    _pickle(root / "test_batch", batch)
    with pytest.raises(DataError, match="test_batch: row 2 has label 10"):
        open_source("cifar10", root)


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, ("touch MARKER_SHOULD_NOT_EXIST",))


def test_cifar_pickle_cannot_run_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = write_cifar10(tmp_path / "c10")
    _pickle(root / "batches.meta", {b"label_names": _Evil()})
    with pytest.raises(DataError, match="refusing to load posix.system"):
        open_source("cifar10", root)
    assert not (tmp_path / "MARKER_SHOULD_NOT_EXIST").exists()


# --- ImageFolder -------------------------------------------------------------------------------
def test_imagefolder_with_split_folders(tmp_path):
    for split, n in (("train", 3), ("val", 1)):
        for c in ("cat", "dog"):
            for i in range(n):
                put(tmp_path / "tree", f"{split}/{c}/{i}.JPEG", seed=i)
    (tmp_path / "tree/train/cat/notes.txt").write_text("not an image")
    (tmp_path / "tree/train/cat/.hidden.jpg").write_bytes(b"x")
    src = open_source("imagefolder", tmp_path / "tree")
    assert src.splits() == ["train", "val"] and src.classes == ["cat", "dog"]
    refs = src.refs("train")
    assert [r.label for r in refs] == [0, 0, 0, 1, 1, 1] and refs[0].ext == "jpg"
    assert refs[0].key == "train_cat_0" and refs[0].path == "train/cat/0.JPEG"
    assert src.read(refs[0]) == (tmp_path / "tree/train/cat/0.JPEG").read_bytes()
    assert [s.key for s in iter_samples(src, "val")] == ["val_cat_0", "val_dog_0"]


def test_imagefolder_bad_inputs(tmp_path):
    put(tmp_path / "a", "train/cat/1.jpg")
    put(tmp_path / "a", "val/bird/1.jpg")
    with pytest.raises(DataError, match="val/bird is not a class of the first split"):
        open_source("imagefolder", tmp_path / "a")
    put(tmp_path / "b", "cat/1.jpg")
    (tmp_path / "b/dog").mkdir()
    with pytest.raises(DataError, match="b/dog holds no images"):
        open_source("imagefolder", tmp_path / "b")
    put(tmp_path / "c", "cat/1.jpg")
    put(tmp_path / "c", "cat/1.png")
    with pytest.raises(DataError, match="map to the same sample key 'cat_1'"):
        open_source("imagefolder", tmp_path / "c")
    put(tmp_path / "outside.jpg".replace(".jpg", ""), "x.jpg")
    put(tmp_path / "d", "cat/1.jpg")
    (tmp_path / "d/cat/2.jpg").symlink_to(tmp_path / "outside/x.jpg")
    with pytest.raises(DataError, match="links outside"):
        open_source("imagefolder", tmp_path / "d")


# --- ImageNet-LT / Places-LT -------------------------------------------------------------------
def write_imagenet_lt(root):
    lines = {"train": [], "val": [], "test": []}
    wnids = ["n01440764", "n01443537", "n01484850"]
    for c, wnid in enumerate(wnids):
        for i in range(4 - c):  # a small long tail: 4, 3, 2
            lines["train"].append(f"train/{wnid}/{wnid}_{i}.JPEG {c}")
        lines["val"].append(f"val/{wnid}/ILSVRC2012_val_{c:08d}.JPEG {c}")
        lines["test"].append(f"val/{wnid}/ILSVRC2012_val_{c + 10:08d}.JPEG {c}")
    for split, ls in lines.items():
        (root / f"ImageNet_LT_{split}.txt").write_text("\n".join(ls) + "\n")
        for n, line in enumerate(ls):
            put(root / "imagenet", line.split()[0], seed=n)
    return root


def test_imagenet_lt_split_files(tmp_path):
    root = write_imagenet_lt(tmp_path)
    src = open_source("imagenet_lt", root, images=str(root / "imagenet"), num_classes="3")
    assert src.splits() == ["train", "val", "test"]
    assert [len(src.refs(s)) for s in src.splits()] == [9, 3, 3]
    assert src.classes == ["n01440764", "n01443537", "n01484850"]
    ref = src.refs("train")[4]
    assert ref.label == 1 and ref.key == "train_n01443537_n01443537_0"
    assert src.read(ref) == (root / "imagenet" / ref.path).read_bytes()


def test_places_lt_drops_one_leading_slash(tmp_path):
    (tmp_path / "Places_LT_train.txt").write_text("/a/airfield/00000001.jpg 0\n"
                                                  "/b/bakery/00000002.jpg 1\n")
    put(tmp_path, "a/airfield/00000001.jpg")
    put(tmp_path, "b/bakery/00000002.jpg")
    src = open_source("places_lt", tmp_path, num_classes="2")
    assert src.classes == ["airfield", "bakery"] and src.splits() == ["train"]


@pytest.mark.parametrize("line,message", [
    ("train/n01440764/x.JPEG", r"ImageNet_LT_train.txt:2: expected 'relative/path.jpg LABEL'"),
    ("train/n01440764/x.JPEG 7", r"ImageNet_LT_train.txt:2: label 7 is outside 0..2"),
    ("train/n01440764/n01440764_0.JPEG 0", r"ImageNet_LT_train.txt:2: .* listed twice \(first "
                                           r"at .*ImageNet_LT_train.txt:1\)"),
    ("train/n01440764/missing.JPEG 0", r"ImageNet_LT_train.txt:2: image train/n01440764/"
                                       r"missing.JPEG not found"),
    ("../../etc/passwd 0", r"ImageNet_LT_train.txt:2: image path .* contains '..'"),
])
def test_lt_split_file_bad_lines(tmp_path, line, message):
    root = write_imagenet_lt(tmp_path)
    first = (root / "ImageNet_LT_train.txt").read_text().splitlines()[0]
    (root / "ImageNet_LT_train.txt").write_text(f"{first}\n{line}\n")
    with pytest.raises(DataError, match=message):
        open_source("imagenet_lt", root, images=str(root / "imagenet"), num_classes="3")


# --- iNaturalist -------------------------------------------------------------------------------
def write_inat(root, year=2018):
    cats = [{"id": 0, "name": "Aves sp."}, {"id": 1, "name": "Plantae sp."},
            {"id": 2, "name": "Fungi sp."}]
    for split, n in (("train", 6), ("val", 3), ("test", 2)):
        images = [{"id": 100 * len(split) + i, "file_name":
                   f"{'test' if split == 'test' else 'train_val'}{year}/Cat/{i % 3}/{split}{i}.jpg",
                   "width": 8, "height": 8} for i in range(n)]
        for i, img in enumerate(images):
            put(root, img["file_name"], seed=i)
        doc = {"info": {"year": year}, "images": images, "categories": cats}
        if split != "test":
            doc["annotations"] = [{"id": i, "image_id": img["id"], "category_id": i % 3}
                                  for i, img in enumerate(images)]
        (root / f"{split}{year}.json").write_text(json.dumps(doc))
    return root


def test_inat_json(tmp_path):
    src = open_source("inat2018", write_inat(tmp_path))
    assert src.splits() == ["train", "val", "test"] and src.classes[1] == "Plantae sp."
    assert [r.label for r in src.refs("train")] == [0, 1, 2, 0, 1, 2]
    assert all(r.label == NO_LABEL for r in src.refs("test"))
    index = build_shards(src, tmp_path / "ds", source_kind="inat2018", source_path="x",
                         progress=False)
    assert (index.label[index.split_ids("test")] == -1).all()
    assert index.path[0] == "train_val2018/Cat/0/train0.jpg"


@pytest.mark.parametrize("edit,message", [
    (lambda d: d["annotations"].append({"id": 9, "image_id": 999, "category_id": 0}),
     r"train2018.json: annotations\[6\]: image_id 999 has no entry"),
    (lambda d: d["annotations"].__setitem__(0, {"id": 0, "image_id": d["images"][0]["id"],
                                                "category_id": 77}),
     r"annotations\[0\]: category_id 77 is not among the categories"),
    (lambda d: d["annotations"].append({"id": 9, "image_id": d["images"][0]["id"],
                                        "category_id": 2}),
     r"annotations\[6\]: image 500 has two different categories"),
])
def test_inat_bad_annotations(tmp_path, edit, message):
    root = write_inat(tmp_path)
    doc = json.loads((root / "train2018.json").read_text())
    edit(doc)
    (root / "train2018.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=message):
        open_source("inat2018", root)


def test_inat_malformed_json_names_position(tmp_path):
    root = write_inat(tmp_path)
    (root / "val2018.json").write_text('{"images": [1, 2,, 3]}')
    with pytest.raises(DataError, match=r"val2018.json: malformed JSON at line 1 column 18"):
        open_source("inat2018", root)


# --- Clothing1M --------------------------------------------------------------------------------
def write_clothing1m(root):
    ann = root / "annotations"
    ann.mkdir(parents=True)
    paths = [f"images/{i % 10}/{i:02d}/{1000 + i},{2000 + i}.jpg" for i in range(12)]
    for i, p in enumerate(paths):
        put(root, p, seed=i)
    noisy = {p: i % 14 for i, p in enumerate(paths[:8])}
    clean = {p: (i + 1) % 14 for i, p in enumerate(paths[5:], 5)}  # 5..7 have both labels
    (ann / "noisy_label_kv.txt").write_text("".join(f"{p} {y}\n" for p, y in noisy.items()))
    (ann / "clean_label_kv.txt").write_text("".join(f"{p} {y}\n" for p, y in clean.items()))
    lists = {"noisy_train": paths[:8], "clean_train": paths[5:9], "clean_val": paths[9:10],
             "clean_test": [paths[7]] + paths[10:]}
    for name, ls in lists.items():
        (ann / f"{name}_key_list.txt").write_text("".join(p + "\n" for p in ls))
    return root, paths


def test_clothing1m_keeps_both_labels_and_puts_test_first(tmp_path):
    root, paths = write_clothing1m(tmp_path / "raw")  # the dataset is written beside, not inside
    src = open_source("clothing1m", root)
    assert len(src.classes) == 14 and src.splits() == ["noisy_train", "clean_train", "clean_val",
                                                        "clean_test"]
    counts = {s: len(src.refs(s)) for s in src.splits()}
    # paths[7] is in noisy_train, clean_train and clean_test: it lands in clean_test only
    assert counts == {"noisy_train": 5, "clean_train": 3, "clean_val": 1, "clean_test": 3}
    assert src.overlaps == {"noisy_train": 3, "clean_train": 1, "clean_val": 0, "clean_test": 0}
    by_path = {r.path: r for s in src.splits() for r in src.refs(s)}
    both = by_path[paths[6]]
    assert both.split == "clean_train" and both.label == 7 and dict(both.extra) == {"noisy_label": 6}
    only_noisy = by_path[paths[0]]
    assert only_noisy.label == NO_LABEL and dict(only_noisy.extra) == {"noisy_label": 0}
    index = build_shards(src, tmp_path / "ds", source_kind="clothing1m", source_path=str(root),
                         progress=False)
    assert index.extra_classes == {"noisy_label": None}
    assert (index.extra("noisy_label") >= 0).sum() == 8 and (index.label >= 0).sum() == 7


@pytest.mark.parametrize("file,text,message", [
    ("clean_val_key_list.txt", "images/0/00/1000,2000.jpg\n",
     r"clean_val_key_list.txt:1: .* is in a clean list but has no label"),
    ("noisy_label_kv.txt", "images/0/00/1000,2000.jpg 3\nimages/0/00/1000,2000.jpg 4\n",
     r"noisy_label_kv.txt:2: .* has label 4, but line 1 gave it 3"),
    ("clean_label_kv.txt", "images/0/00/1000,2000.jpg 14\n",
     r"clean_label_kv.txt:1: label 14 is outside 0..13"),
])
def test_clothing1m_bad_inputs(tmp_path, file, text, message):
    root, _ = write_clothing1m(tmp_path)
    (root / "annotations" / file).write_text(text)
    with pytest.raises(DataError, match=message):
        open_source("clothing1m", root)


def test_unknown_option_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="source 'clothing1m': bad options \\['images'\\]"):
        open_source("clothing1m", tmp_path, images="x")


def test_data_build_help_lists_every_registered_source(capsys):
    import pytest as _pytest

    from ltscale.cli import main
    from ltscale.data.sources import source_kinds

    with _pytest.raises(SystemExit):
        main(["data", "build", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"source kind: {', '.join(source_kinds())}" in text and "svhn" in text


def test_parse_splits_is_shared_by_the_sources_and_names_what_is_wrong():
    import pytest as _pytest

    from ltscale.core.errors import DataError
    from ltscale.data.sources.base import parse_splits

    assert parse_splits(None, ["train", "test"], "x") == ["train", "test"]
    assert parse_splits(" test , train", ["train", "test"], "x") == ["train", "test"]  # its order
    assert parse_splits(["extra"], ["train"], "svhn", known=["train", "test", "extra"]) == ["extra"]
    with _pytest.raises(DataError, match=r"^x: option splits='val' names val; choose from train"):
        parse_splits("val", ["train"], "x")
    with _pytest.raises(DataError, match="names no split"):
        parse_splits(" , ", ["train"], "x")


def test_listed_file_sources_name_an_unknown_split():
    import pytest as _pytest

    from ltscale.core.errors import DataError
    from ltscale.data.sources.files import ListedFiles

    class Tiny(ListedFiles):
        name, _refs = "tiny", {"train": [], "val": []}

    assert Tiny().splits() == ["train", "val"] and Tiny().refs("val") == []
    with _pytest.raises(DataError, match=r"tiny: no split 'test'; splits: train, val"):
        Tiny().refs("test")
