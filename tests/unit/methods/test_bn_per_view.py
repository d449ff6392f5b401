"""SimSiam and BYOL pass each view through the network on its own (batch-norm statistics per
view, as their reference code's f(x1), f(x2)); ``bn_per_view: false`` keeps one pass over both."""

import pytest
import torch

from ltscale.engine.backend import channels_last
from ltscale.losses.ssl import byol_loss, simsiam_loss
from ltscale.methods import create_method
from ltscale.models import create_backbone

B = 6
SMALL = {"simsiam": dict(proj_dim=32, pred_dim=16), "byol": dict(proj_dim=32, out_dim=16,
                                                                 pred_dim=32)}


def _method(name, **extra):
    torch.manual_seed(0)
    return create_method(name, create_backbone("resnet_tiny", in_chans=3), **SMALL[name], **extra)


def _batch_sizes(module) -> list:
    seen = []
    module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    return seen


@pytest.mark.parametrize("name", ["simsiam", "byol"])
@pytest.mark.parametrize("per_view, expected", [(True, [B, B]), (False, [2 * B])])
def test_each_view_is_its_own_batch(name, per_view, expected):
    method = _method(name, bn_per_view=per_view)
    online = _batch_sizes(method.encoder)
    target = _batch_sizes(method.target) if name == "byol" else None
    views = channels_last(torch.randn(B, 2, 3, 16, 16))  # as the engine hands them over
    layouts = []
    method.encoder.register_forward_pre_hook(
        lambda _m, args: layouts.append(args[0].stride(1) == 1))
    out = method((views, torch.zeros(B, dtype=torch.long)))
    assert torch.isfinite(out["loss"])
    assert online == expected and all(layouts)  # channels stay innermost in each view
    if target is not None:
        assert target == expected


@pytest.mark.parametrize("name", ["simsiam", "byol"])
def test_per_view_loss_is_the_loss_of_separate_passes(name):
    method = _method(name)
    views = torch.randn(B, 2, 3, 16, 16)
    torch.manual_seed(1)
    got = method((views, torch.zeros(B, dtype=torch.long)))["loss"]
    reference = _method(name)
    x1, x2 = views[:, 0], views[:, 1]
    z1 = reference.projector(reference.encoder(x1))
    z2 = reference.projector(reference.encoder(x2))
    p1, p2 = reference.predictor(z1), reference.predictor(z2)
    if name == "simsiam":
        want = simsiam_loss(p1, p2, z1, z2)
    else:
        want = byol_loss(p1, reference.target(x2)) + byol_loss(p2, reference.target(x1))
    torch.testing.assert_close(got, want)
