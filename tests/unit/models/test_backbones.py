import pytest
import torch
from torchvision.models import resnet18

from ltscale.models import backbone_names, create_backbone


def test_encoder_weights_load_into_a_plain_torchvision_resnet():
    enc = create_backbone("resnet18", in_chans=3, cifar_stem=False)
    missing, unexpected = resnet18().load_state_dict(enc.state_dict(), strict=False)
    assert unexpected == [] and sorted(missing) == ["fc.bias", "fc.weight"]


@pytest.mark.parametrize("name", backbone_names())
def test_every_backbone_gives_its_feature_width(name):
    if name in ("resnet34", "resnet50"):
        pytest.skip("large: resnet18 covers the torchvision family")
    enc = create_backbone(name, in_chans=1, cifar_stem=True).eval()
    assert enc(torch.zeros(2, 1, 32, 32)).shape == (2, enc.feat_dim)


def test_unknown_backbone_lists_the_registered_names():
    with pytest.raises(KeyError, match="cifar_resnet32"):
        create_backbone("resnet19")
