"""The gpu tier for ``data.loader.decode: gpu``: torchvision's nvJPEG batch decoder and the device
views on CUDA against the Pillow path (``decode: cpu``) on the same sampler and seeds. Skipped,
saying so, without CUDA; the CPU side of the same comparison is tests/unit/data/test_decode_gpu.py.

Tolerance: ``LOOSE`` (a mean absolute difference under 1.5 uint8 levels per batch), the bound the
unit tests give the Pillow path as it runs. On CUDA the decoder differs too — nvJPEG's inverse DCT
and chroma upsampling are not libjpeg-turbo's — while the views are the same integer resampling,
colour maps and blur as on the CPU device; a wrongly drawn view is tens of levels away.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ltscale.core.errors import DataError
from ltscale.data.augment import eval_spec, make_preset, preset_names
from ltscale.data.augment_torch import EvalView, TrainViews
from ltscale.data.index import ShardIndex
from tests.unit.data.test_decode_gpu import (
    LOOSE,
    collect,
    compare,
    damage_tables,
    make,
    photo_shards,
    private_copy,
)

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs CUDA: the gpu tier runs on a GPU machine "
                                        "(bash tools/gpu-check.sh)")]

CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return photo_shards(tmp_path_factory)


@pytest.fixture
def rgb_copy(shards, tmp_path):
    return private_copy(shards[3], tmp_path)


def on_host(batches):
    for x, _, _ in batches:
        assert x.device.type == "cuda" and x.dtype == torch.float32
    return [(x.cpu(), y, p) for x, y, p in batches]


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", preset_names())
def test_cuda_views_match_the_pillow_path(shards, name, channels):
    index = ShardIndex.load(shards[channels]).load_all()
    views = TrainViews(make_preset(name, 24, channels), channels)
    cpu = collect(make(index, views, "cpu", channels=channels)[0])
    loader, _ = make(index, views, "gpu", channels=channels, device=CUDA, workers=2)
    assert loader.loader.pin_memory  # EncodedBatch buffers pinned for the copy
    assert compare(cpu, on_host(collect(loader))) < LOOSE


@pytest.mark.parametrize("channels", [1, 3])
def test_cuda_eval_view_matches_the_pillow_path(shards, channels):
    index = ShardIndex.load(shards[channels]).load_all()
    views = EvalView(eval_spec(32, 0.875), channels)
    cpu = collect(make(index, views, "cpu", channels=channels, shuffle="none")[0])
    gpu = collect(make(index, views, "gpu", channels=channels, shuffle="none", device=CUDA)[0])
    assert compare(cpu, on_host(gpu)) < LOOSE


def test_cuda_and_cpu_decoders_give_the_same_views(shards):
    """Only the decoder differs between decode: gpu on CUDA and on the CPU device."""
    index = ShardIndex.load(shards[3]).load_all()
    views = TrainViews(make_preset("simclr", 24, 3), 3)
    on_cpu = collect(make(index, views, "gpu")[0])
    on_cuda = on_host(collect(make(index, views, "gpu", device=CUDA)[0]))
    assert compare(on_cpu, on_cuda) < LOOSE
    again = on_host(collect(make(index, views, "gpu", device=CUDA, workers=2)[0]))
    assert compare(on_cuda, again) < 1e-3  # the same on CUDA with workers and pinned memory


def test_a_jpeg_nvjpeg_cannot_decode_is_named_and_skipped(rgb_copy):
    key, shard = damage_tables(rgb_copy, 7)  # a scan using Huffman tables no JPEG defines
    views = TrainViews(make_preset("simclr", 24, 3), 3)
    failing, _ = make(rgb_copy, views, "gpu", device=CUDA)
    with pytest.raises(DataError) as err:
        collect(failing)
    assert str(err.value).startswith(f"sample {key} in shard {shard}: cannot decode image (")
    skipping, _ = make(rgb_copy, views, "gpu", device=CUDA, on_error="skip", workers=2)
    batches = on_host(collect(skipping))
    assert [k for k, _ in skipping.stats.skipped] == [key]
    seen = np.concatenate([p.numpy() for _, _, p in batches])
    assert 7 not in seen and len(seen) == skipping.stats.samples == 19
