"""End-to-end fine-tuning on images (``finetune.mode: partial | full``), its mechanisms: the
encoder split into stages, all but the last ``trainable_stages`` frozen (weights and BatchNorm
statistics), and the result of a run. ``stages/endtoend.py`` trains encoder + linear classifier
with the ``supervised`` method by the engine's one loop."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ltscale.core.errors import RecipeError


@dataclass
class EndToEndResult:
    method: nn.Module             # the supervised method: encoder + classifier, trained
    history: list[dict]           # the engine loop's per-epoch records
    trainable_parameters: int


def encoder_stages(encoder: nn.Module) -> list[list[nn.Module]]:
    """The encoder as an ordered list of stages, input first: the stem, then each resolution
    stage (torchvision ResNets: layer1…layer4; CIFAR ResNets: the blocks of one width)."""
    if all(hasattr(encoder, f"layer{i}") for i in range(1, 5)):  # torchvision ResNet
        stem = [m for m in (encoder.conv1, encoder.bn1) if m is not None]
        return [stem] + [[getattr(encoder, f"layer{i}")] for i in range(1, 5)]
    if hasattr(encoder, "layers") and hasattr(encoder, "conv1"):  # ltscale CifarResNet
        stages: list[list[nn.Module]] = [[encoder.conv1, encoder.bn1]]
        width = None
        for block in encoder.layers:
            out = block.conv2.out_channels
            if out != width:
                stages.append([])
                width = out
            stages[-1].append(block)
        return stages
    children = [m for m in encoder.children() if any(True for _ in m.parameters())]
    return [[m] for m in children]


def freeze_stages(encoder: nn.Module, trainable: int | None) -> list[nn.Module]:
    """Freeze all but the last ``trainable`` stages (None: train everything); returns the frozen
    modules (to be kept in eval mode)."""
    stages = encoder_stages(encoder)
    if trainable is None:
        return []
    if not 1 <= trainable <= len(stages):
        raise RecipeError(f"finetune.trainable_stages={trainable}, but the encoder has "
                          f"{len(stages)} stages (stem + {len(stages) - 1}); choose 1…"
                          f"{len(stages)} or finetune.mode=full")
    frozen = [m for stage in stages[:len(stages) - trainable] for m in stage]
    for m in frozen:
        for p in m.parameters():
            p.requires_grad_(False)
    return frozen


class PartiallyFrozen(nn.Module):
    """A method whose ``frozen`` modules stay in eval mode (BatchNorm statistics untouched) when
    the loop calls ``train()``; everything else is delegated."""

    def __init__(self, method: nn.Module, frozen: list[nn.Module]):
        super().__init__()
        self.method = method
        self._frozen = frozen  # a plain list: not registered twice in the state_dict
        self.views, self.uses_labels = method.views, method.uses_labels

    @property
    def encoder(self):
        return self.method.encoder

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self._frozen:
            m.eval()
        return self

    def set_epoch(self, epoch: int, epochs: int) -> None:
        hook = getattr(self.method, "set_epoch", None)
        if hook is not None:
            hook(epoch, epochs)

    def logits(self, x):
        return self.method.logits(x)

    def forward(self, batch):
        return self.method(batch)


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
