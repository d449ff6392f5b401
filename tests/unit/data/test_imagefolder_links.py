"""ImageFolder and links: a link never relabels a file, moves it across splits or counts it twice.

Issue #29: ``train/bee/dup -> ../ant`` listed the ant images as bee too, ``train/ant/leak ->
../../test/ant`` put test images into training and ``ant/up -> ..`` relabelled every class.
"""

import os

import pytest

from ltscale.cli import main as cli
from ltscale.core.errors import DataError
from ltscale.data.sources import open_source
from tests.unit.data.test_sources_imagefolder import put


def tree(root, *rels):
    for i, rel in enumerate(rels):
        put(root, rel, seed=i)
    return root


def listed(src):
    return {s: [(r.path, src.classes[r.label]) for r in src.refs(s)] for s in src.splits()}


# --- links that leave their class folder: refused, or left out with links=skip -------------------
def test_a_link_to_another_class_is_refused_naming_link_and_target(tmp_path):
    root = tree(tmp_path / "t", "train/ant/a1.jpg", "train/ant/a2.jpg", "train/bee/b1.jpg")
    (root / "train/bee/dup").symlink_to("../ant")
    with pytest.raises(DataError, match=r"t/train/bee/dup links outside its class folder .*"
                                        r"train/bee \(to .*t/train/ant\); refusing it.*"
                                        r"--option links=skip") as exc:
        open_source("imagefolder", root)
    assert "\n" not in str(exc.value)


def test_links_skip_leaves_them_out_counts_and_warns(tmp_path, ltscale_log):
    root = tree(tmp_path / "t", "train/ant/a1.jpg", "train/ant/a2.jpg", "train/bee/b1.jpg",
                "test/ant/t1.jpg")
    (root / "train/bee/dup").symlink_to("../ant")
    (root / "train/ant/leak").symlink_to("../../test/ant")
    src = open_source("imagefolder", root, links="skip")
    assert listed(src) == {"train": [("train/ant/a1.jpg", "ant"), ("train/ant/a2.jpg", "ant"),
                                     ("train/bee/b1.jpg", "bee")],
                           "test": [("test/ant/t1.jpg", "ant")]}
    real = os.path.realpath
    assert src.skipped_links == [("train/ant/leak", real(root / "test/ant")),
                                 ("train/bee/dup", real(root / "train/ant"))]
    warned = [line for line in ltscale_log if "left out 2 link(s)" in line]
    assert warned and "links=skip" in warned[0] and "train/ant/leak ->" in warned[0]


def test_a_link_into_the_test_split_is_refused(tmp_path):
    root = tree(tmp_path / "t", "train/ant/a1.jpg", "test/ant/t1.jpg")
    (root / "train/ant/leak").symlink_to("../../test/ant")
    with pytest.raises(DataError, match=r"train/ant/leak links outside its class folder"):
        open_source("imagefolder", root)
    (root / "train/ant/leak").unlink()  # a single test file linked into training: the same
    (root / "train/ant/t1.jpg").symlink_to("../../test/ant/t1.jpg")
    with pytest.raises(DataError, match=r"train/ant/t1.jpg links outside its class folder"):
        open_source("imagefolder", root)


def test_a_link_up_to_the_root_is_refused(tmp_path):
    root = tree(tmp_path / "t", "ant/a1.jpg", "bee/b1.jpg")
    (root / "ant/up").symlink_to("..")
    with pytest.raises(DataError, match=r"t/ant/up links outside its class folder"):
        open_source("imagefolder", root)
    src = open_source("imagefolder", root, links="skip")
    assert listed(src) == {"train": [("ant/a1.jpg", "ant"), ("bee/b1.jpg", "bee")]}


def test_links_skip_also_leaves_out_links_outside_the_root(tmp_path):
    put(tmp_path / "outside", "x.jpg")
    root = tree(tmp_path / "r", "cat/1.jpg")
    (root / "cat/2.jpg").symlink_to(tmp_path / "outside/x.jpg")
    assert [r.path for r in open_source("imagefolder", root, links="skip").refs("train")] == [
        "cat/1.jpg"]


def test_an_unknown_links_option_is_refused(tmp_path):
    root = tree(tmp_path / "t", "ant/a1.jpg")
    with pytest.raises(DataError, match=r"option links='follow' is not known; use links=refuse"):
        open_source("imagefolder", root, links="follow")


# --- class and split folders that are links ------------------------------------------------------
@pytest.mark.parametrize("link, target, needle", [
    ("train/bee", "ant", r"class folder .*t/train/bee links to .*t/train/ant, which is class "
                         r"folder .*t/train/ant"),
    ("test/ant", "../train/ant", r"class folder .*t/test/ant links to .*t/train/ant, which is"),
    ("test/ant", "../train/ant/sub", r"class folder .*t/test/ant links to .*train/ant/sub, "
                                     r"which overlaps class folder .*t/train/ant"),
    ("val", "train", r"class folder .*t/val/ant links to .*t/train/ant"),
    ("test/ant", "..", r"class folder .*t/test/ant links to .*t, which holds"),
])
def test_class_or_split_folders_linked_onto_others_are_refused(tmp_path, link, target, needle):
    root = tree(tmp_path / "t", "train/ant/a1.jpg", "train/ant/sub/a2.jpg", "train/bee/b1.jpg",
                "test/ant/t1.jpg")
    path = root / link
    if path.exists():
        for p in sorted(path.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        path.rmdir()
    path.symlink_to(target)
    for links in ("refuse", "skip"):  # never left out: that would drop or shift a class
        with pytest.raises(DataError, match=needle):
            open_source("imagefolder", root, links=links)


def test_a_class_folder_linked_to_a_hidden_folder_is_fine(tmp_path):
    root = tree(tmp_path / "t", ".store/bee/b1.jpg", "ant/a1.jpg")
    (root / "bee").symlink_to(".store/bee")
    assert listed(open_source("imagefolder", root)) == {
        "train": [("ant/a1.jpg", "ant"), ("bee/b1.jpg", "bee")]}


# --- links inside their class: followed, each real file once -------------------------------------
def test_links_inside_the_class_index_each_real_file_once(tmp_path, ltscale_log):
    root = tree(tmp_path / "t", "ant/z.jpg", "ant/sub/s.jpg", "bee/b.jpg")
    (root / "ant/a_alias.jpg").symlink_to("z.jpg")  # sorts before its target: target kept
    (root / "ant/again").symlink_to(".")             # the class folder once more: not walked
    (root / "ant/deep").symlink_to("sub")            # sorts before sub: sub is still listed
    (root / "ant/sub/s2.jpg").symlink_to("../z.jpg")
    (root / "bee/other.jpg").symlink_to("b.jpg")
    src = open_source("imagefolder", root)
    assert listed(src) == {"train": [("ant/sub/s.jpg", "ant"), ("ant/z.jpg", "ant"),
                                     ("bee/b.jpg", "bee")]}
    assert src.duplicates == {"train": 3} and src.skipped_links == []
    assert any("3 image(s) that are another image of their class" in line for line in ltscale_log)
    put(root, "ant/.h.jpg")  # a hidden file reached by links only: the first link by name
    (root / "ant/sub/h0.jpg").symlink_to("../.h.jpg")
    (root / "ant/h1.jpg").symlink_to(".h.jpg")
    assert [r.path for r in open_source("imagefolder", root).refs("train")] == [
        "ant/h1.jpg", "ant/sub/s.jpg", "ant/z.jpg", "bee/b.jpg"]


def test_hard_links_count_once_in_a_class_and_are_refused_across_classes(tmp_path):
    root = tree(tmp_path / "t", "train/ant/a.jpg", "train/bee/b.jpg", "test/ant/t.jpg")
    os.link(root / "train/ant/a.jpg", root / "train/ant/copy.jpg")
    src = open_source("imagefolder", root)
    assert [r.path for r in src.refs("train")] == ["train/ant/a.jpg", "train/bee/b.jpg"]
    assert src.duplicates == {"train": 1}
    os.link(root / "train/bee/b.jpg", root / "test/ant/b.jpg")
    with pytest.raises(DataError, match=r"train/bee/b.jpg and test/ant/b.jpg are one file"):
        open_source("imagefolder", root)


# --- the command line: one line and exit 2, or a warning and the build ---------------------------
def test_data_build_refuses_or_skips_the_link(tmp_path, capsys):
    root = tree(tmp_path / "t", "train/ant/a1.jpg", "train/bee/b1.jpg")
    (root / "train/bee/dup").symlink_to("../ant")
    assert cli(["data", "build", "imagefolder", str(root), "--out", str(tmp_path / "s"),
                "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train/bee/dup links outside its class folder" in err
    assert not (tmp_path / "s").exists()
    assert cli(["data", "build", "imagefolder", str(root), "--out", str(tmp_path / "s"),
                "--workers", "1", "--option", "links=skip"]) == 0
    out, err = capsys.readouterr()
    assert "left out 1 link(s)" in err and "wrote 2 samples" in out
