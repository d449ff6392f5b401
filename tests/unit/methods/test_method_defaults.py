"""Every pretraining method's defaults — its options and the optimizer it runs when a recipe sets
none — written out here as literal tables with their source, so that a default can only change
together with this file (and its citation)."""

import pytest

from ltscale.config.base import OptimCfg
from ltscale.config.loading import recipe_from_dict
from ltscale.methods import method_config, method_configs

# OptimCfg's own defaults: what a method without a paper optimizer (below: `{}`) runs
GENERIC = {"name": "sgd", "lr": 0.03, "bias_lr": None, "lars_eta": 0.02, "scale_lr": True,
           "momentum": 0.9, "weight_decay": 5e-4, "warmup_epochs": 10, "schedule": "cosine"}

SUPCON = {"name": "sgd", "lr": 0.125, "momentum": 0.9, "weight_decay": 1e-4,
          "warmup_epochs": 10, "schedule": "cosine"}
SDCLR = {"name": "sgd", "lr": 0.25, "momentum": 0.9, "weight_decay": 1e-4,
         "warmup_epochs": 10, "schedule": "cosine"}

# method → (options, default_optim)
TABLE = {
    # SimCLR, Chen et al. 2020: §2.3 default setting (LARS, lr 0.3·B/256, wd 1e-6, 10-epoch
    # warm-up, cosine); T 0.5 is the paper's CIFAR value (App. B.9); trust coefficient 1e-3 is
    # the released code's. Projector 2048 → 128.
    "simclr": ({"proj_dim": 2048, "out_dim": 128, "proj_layers": 2, "temperature": 0.5},
               {"name": "lars", "lr": 0.3, "lars_eta": 1e-3, "momentum": 0.9,
                "weight_decay": 1e-6, "warmup_epochs": 10, "schedule": "cosine"}),
    # BYOL, Grill et al. 2020: §3.3 (LARS, base lr 0.2·B/256, wd 1.5e-6, 10-epoch warm-up,
    # cosine; τ_base 0.996; projector/predictor 4096 → 256), App. C (trust coefficient 1e-3);
    # each view its own forward (BN statistics per view) as the reference implementation
    "byol": ({"proj_dim": 4096, "out_dim": 256, "pred_dim": 4096, "proj_layers": 2,
              "tau_base": 0.996, "bn_per_view": True},
             {"name": "lars", "lr": 0.2, "lars_eta": 1e-3, "momentum": 0.9,
              "weight_decay": 1.5e-6, "warmup_epochs": 10, "schedule": "cosine"}),
    # Barlow Twins, Zbontar et al. 2021, implementation details: LARS, lr 0.2 (weights) and
    # 0.0048 (biases, BN) × B/256, wd 1.5e-6, 10-epoch warm-up, cosine; λ 5e-3. The projector is
    # seed 000's (Karthik et al. 2021 §3.2: 2048 wide), not the paper's 8192.
    "barlow_twins": ({"proj_dim": 2048, "out_dim": 2048, "proj_layers": 3, "lam": 0.005},
                     {"name": "lars", "lr": 0.2, "bias_lr": 0.0048, "lars_eta": 1e-3,
                      "momentum": 0.9, "weight_decay": 1.5e-6, "warmup_epochs": 10,
                      "schedule": "cosine"}),
    # MoCo v2, Chen et al. 2020b: SGD lr 0.03·B/256, cosine, no warm-up, τ 0.2, m 0.999,
    # K 65536, MLP head 2048 → 128; momentum 0.9 and wd 1e-4 as MoCo v1 (He et al. 2020)
    "moco": ({"proj_dim": 2048, "out_dim": 128, "proj_layers": 2, "queue_size": 65536,
              "momentum": 0.999, "temperature": 0.2, "shuffle_bn": True, "symmetric": False},
             {"name": "sgd", "lr": 0.03, "momentum": 0.9, "weight_decay": 1e-4,
              "warmup_epochs": 0, "schedule": "cosine"}),
    # SimSiam, Chen & He 2021: §4 optimizer (SGD lr 0.05·B/256, momentum 0.9, wd 1e-4, cosine,
    # predictor lr fixed); projector 2 layers as seed 000 (the paper: 3), predictor 512 wide;
    # each view its own forward (Algorithm 1: f(x1), f(x2), so BN statistics per view)
    "simsiam": ({"proj_dim": 2048, "pred_dim": 512, "proj_layers": 2, "fix_pred_lr": True,
                 "bn_per_view": True},
                {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4,
                 "warmup_epochs": 0, "schedule": "cosine"}),
    # Rotation, Gidaris et al. 2018 §4.1 (CIFAR): SGD lr 0.1 at batch 128 (unscaled), momentum
    # 0.9, wd 5e-4; the paper's step decay is replaced by cosine
    "rotation": ({},
                 {"name": "sgd", "lr": 0.1, "scale_lr": False, "momentum": 0.9,
                  "weight_decay": 5e-4, "warmup_epochs": 0, "schedule": "cosine"}),
    # SupCon, Khosla et al. 2020 / KCL, Kang et al. 2021: τ 0.1, 128-d output, KCL k 6. The
    # optimizer is SupCon's reference code for CIFAR (SupContrast: SGD lr 0.5 at batch 1024,
    # momentum 0.9, wd 1e-4, 10 warm-up epochs, cosine); KCL takes it too (assumed)
    "supcon": ({"proj_dim": 2048, "out_dim": 128, "proj_layers": 2, "temperature": 0.1},
               SUPCON),
    "kcl": ({"proj_dim": 2048, "out_dim": 128, "proj_layers": 2, "temperature": 0.1, "k": 6},
            SUPCON),
    # SBCL, Hou et al. 2023: the authors' CIFAR-LT release (the paper's appendix is not in our
    # copy); SupCon's optimizer (assumed: its warm-up is SupCon)
    "sbcl": ({"proj_dim": 2048, "out_dim": 128, "proj_layers": 2, "tau1": 0.1, "beta": 0.25,
              "delta": 10, "alpha": 10.0, "warmup_epochs": 10, "warmup_loss": "supcon", "k": 6,
              "update_every": 10, "cluster_iters": 10}, SUPCON),
    # SDCLR, Jiang et al. 2021: its released CIFAR-LT settings (SGD lr 0.5 at batch 512,
    # momentum 0.9, wd 1e-4, 10 warm-up epochs, cosine)
    "sdclr": ({"proj_dim": 512, "out_dim": 128, "proj_layers": 3, "temperature": 0.2,
               "prune_ratio": 0.9, "prune_scope": "layer", "dual_bn": True}, SDCLR),
    # FASSL, Lin et al. (Table 3: teacher EMA 0.99; K 128); no optimizer given: SDCLR's, whose
    # network it continues (assumed)
    "fassl_proto": ({"proj_dim": 512, "out_dim": 128, "proj_layers": 3, "prototypes": 128,
                     "beta": 0.2}, SDCLR),
    "fassl": ({"proj_dim": 512, "out_dim": 128, "proj_layers": 3, "pred_dim": 512,
               "prototypes": 128, "momentum": 0.99, "weight_clip": 3.0}, SDCLR),
}


def test_the_table_covers_every_method():
    assert sorted(TABLE) == sorted(c.model_fields["name"].default for c in method_configs())


@pytest.mark.parametrize("name", sorted(TABLE))
def test_method_defaults_are_the_table(name):
    options, optim = TABLE[name]
    cfg = method_config(name)
    assert cfg().model_dump() == {"name": name, **options}
    assert getattr(cfg, "default_optim", {}) == optim
    # a recipe that sets no optimizer runs exactly that one (OptimCfg's defaults elsewhere)
    recipe = recipe_from_dict({"pretrain": {"method": {"name": name}}})
    (stage,) = recipe.pretrain.resolved_stages()
    assert stage.optim.model_dump() == OptimCfg(**(GENERIC | optim)).model_dump()


def test_a_set_optimizer_field_overrides_only_that_field():
    p = recipe_from_dict({"pretrain": {"method": {"name": "byol"},
                                       "optim": {"lr": 0.5}}}).pretrain
    assert p.optim.model_dump() == OptimCfg(**(GENERIC | TABLE["byol"][1] | {"lr": 0.5})
                                            ).model_dump()


def test_another_optimizer_drops_the_method_defaults():
    # seed 000 runs Barlow Twins with Adam: LARS's lr, bias lr, trust coefficient and warm-up
    # do not carry over
    p = recipe_from_dict({"pretrain": {"method": {"name": "barlow_twins"},
                                       "optim": {"name": "adam", "lr": 0.003}}}).pretrain
    assert p.optim.model_dump() == OptimCfg(**(GENERIC | {"name": "adam", "lr": 0.003})
                                            ).model_dump()


def test_resolved_optimizer_survives_a_dump_and_reload():
    recipe = recipe_from_dict({"pretrain": {"method": {"name": "simclr"},
                                            "optim": {"weight_decay": 0.0}}})
    again = recipe_from_dict(recipe.model_dump(mode="json"))
    assert again.pretrain.optim == recipe.pretrain.optim
    assert again.pretrain.optim.name == "lars" and again.pretrain.optim.weight_decay == 0.0


@pytest.mark.parametrize("name", [c.model_fields["name"].default for c in method_configs()])
def test_each_option_is_declared_once_the_method_signature_follows_its_config(name):
    """A method's options class and its constructor name the same options with the same
    defaults, so the Config is the one declaration and the signature cannot drift from it."""
    import inspect

    from ltscale.methods import METHOD_INPUTS, method_class

    cfg = method_config(name)
    options = {k: f.default for k, f in cfg.model_fields.items() if k != "name"}
    params = inspect.signature(method_class(name).__init__).parameters
    needs = set(getattr(method_class(name), "needs", ())) | set(METHOD_INPUTS)
    taken = {k: p.default for k, p in params.items()
             if k not in ("self", "encoder") and k not in needs
             and p.kind is not inspect.Parameter.VAR_KEYWORD}
    assert set(taken) == set(options), (
        f"{name}: options only in {cfg.__name__}: {sorted(set(options) - set(taken))}; only in "
        f"the constructor: {sorted(set(taken) - set(options))}")
    differ = {k: (options[k], taken[k]) for k in options if taken[k] != options[k]}
    assert not differ, f"{name}: defaults differ (Config, constructor): {differ}"
