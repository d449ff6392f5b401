"""core.registry.Registry: the one shape of the method, loss, source and backbone registries."""

import pytest

from ltscale.core.registry import Registry
from ltscale.data.sources import source_kinds
from ltscale.losses import loss_names
from ltscale.methods import method_names
from ltscale.models import backbone_names


def test_register_query_and_refuse():
    seen = []
    reg = Registry("widget", discover=lambda: seen.append(1) or reg.register("b", 2))

    @reg.register("a")
    def a():
        return 1

    assert reg.names() == ["a", "b"] and "a" in reg and "c" not in reg and seen == [1]
    assert reg.get("a") is a and list(reg.entries()) == ["a", "b"]
    reg.register("a", a)  # the same entry again: fine
    with pytest.raises(ValueError, match="widget 'a' is registered twice"):
        reg.register("a", 3)
    with pytest.raises(KeyError, match=r"unknown widget 'aa'; known widgets: a, b \(did you "
                                       r"mean 'a'\?\)"):
        reg.get("aa")


def test_a_failed_discovery_is_retried():
    calls = []

    def discover():
        calls.append(1)
        if len(calls) == 1:
            raise ImportError("first try")

    reg = Registry("thing", discover=discover)
    with pytest.raises(ImportError):
        reg.names()
    assert reg.names() == [] and len(calls) == 2


def test_every_component_kind_is_registered_through_it():
    from ltscale.data.sources import SOURCES
    from ltscale.losses._registry import LOSSES
    from ltscale.methods._registry import METHODS
    from ltscale.models.registry import BACKBONES

    for registry, names, some in ((METHODS, method_names(), {"simsiam", "supervised"}),
                                  (LOSSES, loss_names(), {"ce", "la", "ldam"}),
                                  (SOURCES, source_kinds(), {"idx", "svhn", "imagefolder"}),
                                  (BACKBONES, backbone_names(), {"resnet18", "resnet_tiny"})):
        assert isinstance(registry, Registry) and registry.names() == names and some <= set(names)


def test_options_declared_torch_free_are_bound_to_their_components():
    """Recipe validation reads the torch-free declarations (method and loss options, backbone
    names); each must name exactly the registered components, bound as their ``Config``."""
    from ltscale.losses._registry import LOSSES
    from ltscale.losses.options import LOSS_OPTIONS
    from ltscale.methods._registry import METHODS
    from ltscale.methods.options import METHOD_OPTIONS
    from ltscale.models.registry import BACKBONE_NAMES, BACKBONES, register_backbone

    assert LOSSES.names() == LOSS_OPTIONS.names()
    for name, cls in LOSSES.entries().items():
        assert cls.Config is LOSS_OPTIONS.get(name) and cls.name == name
        assert cls.classifier == cls.Config.classifier
    assert LOSSES.get("ldam").classifier == "cosine" == LOSSES.get("ldam_drw").classifier
    assert set(METHOD_OPTIONS.names()) == set(METHODS.names()) - {"supervised"}
    for name, cls in METHODS.entries().items():
        assert cls.Config is (METHOD_OPTIONS.get(name) if name != "supervised" else None)
    assert BACKBONES.names() == sorted(BACKBONE_NAMES)
    with pytest.raises(ValueError, match="not declared"):
        register_backbone("resnet_huge")
