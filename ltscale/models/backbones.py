"""Backbones by name. Each returns an encoder module with ``feat_dim`` whose forward gives pooled
features. ImageNet ResNets come from torchvision (optionally with the CIFAR stem: 3×3 conv,
stride 1, no max-pool); the CIFAR ResNet family (three stages of 16/32/64 channels) is here.
Their names are declared, torch-free, in ``models/registry.py``."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet

from ltscale.models.registry import register_backbone


def _torchvision_resnet(ctor, in_chans: int, cifar_stem: bool) -> nn.Module:
    model = ctor(weights=None)
    if cifar_stem:
        model.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    elif in_chans != 3:
        model.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
    model.feat_dim = model.fc.in_features
    model.fc = nn.Identity()
    return model


for _name, _ctor in {"resnet18": resnet.resnet18, "resnet34": resnet.resnet34,
                     "resnet50": resnet.resnet50}.items():
    register_backbone(_name)(lambda in_chans, cifar_stem, _c=_ctor:
                             _torchvision_resnet(_c, in_chans, cifar_stem))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images: a 3×3 stem, three stages of n blocks, global pooling."""

    def __init__(self, blocks_per_stage: int, widths=(16, 32, 64), in_chans: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            for b in range(blocks_per_stage):
                layers.append(_Block(cin, w, 2 if (b == 0 and i > 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.feat_dim = cin

    def forward(self, x):
        x = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


for _depth in (20, 32, 56):
    register_backbone(f"cifar_resnet{_depth}")(
        lambda in_chans, cifar_stem, _n=(_depth - 2) // 6: CifarResNet(_n, in_chans=in_chans))

# tiny variants: whole methods run in seconds on a CPU (tests, smoke runs, the quickstart)
register_backbone("cifar_resnet8")(lambda in_chans, cifar_stem: CifarResNet(1, in_chans=in_chans))
register_backbone("resnet_tiny")(
    lambda in_chans, cifar_stem: CifarResNet(1, widths=(8, 16, 32), in_chans=in_chans))
