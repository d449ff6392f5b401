import numpy as np

from ltscale.data.augment import eval_spec
from ltscale.data.augment_torch import EvalView
from ltscale.data.dataset import ManifestDataset
from ltscale.data.manifest import build_manifest
from ltscale.data.manifest_spec import EvalSelection, ManifestSpec
from ltscale.data.shards import build_shards
from ltscale.data.sources import open_source


def test_roles_pick_what_each_stage_reads(tiny_idx, tmp_path):
    index = build_shards(open_source("idx", tiny_idx), tmp_path / "ds", source_kind="idx",
                         source_path=str(tiny_idx), progress=False)
    m = build_manifest(index, ManifestSpec(few_labels=0.25, test=EvalSelection("test", 2)))
    views = EvalView(eval_spec(8), channels=1)
    labeled = ManifestDataset.from_manifest(index, m, views)
    both = ManifestDataset.from_manifest(index, m, views,
                                         roles=("labeled", "unlabeled"))
    # 20 train images per class: 5 keep their label, 15 become unlabeled images
    assert len(labeled) == 15 and len(both) == 60
    assert set(labeled.labels.tolist()) == {0, 1, 2}
    assert (both.labels == -1).sum() == 45
    test_ids, test_labels = m.rows("test")
    assert len(test_ids) == 6 and np.bincount(test_labels).tolist() == [2, 2, 2]
    assert set(test_ids) <= set(index.split_ids("test"))
    image, label, pos = labeled[0]
    assert image.shape == (1, 8, 8) and label == labeled.labels[0]
