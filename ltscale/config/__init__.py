"""Recipes: what a run is, as typed configuration.

- ``base``: ``Section`` (unknown keys refused, assignments validated) and the optimizer and
  augmentation sections several stages share;
- ``schema``: ``Recipe`` and its data, manifest, eval, engine, tracking and reference sections;
- ``pretrain``: the pretraining sections (a method's options come from the method registry);
- ``supervised``: fine-tuning, the baselines and self-training (loss options from the loss
  registry);
- ``loading``: a YAML file or dict → ``Recipe``, with one-line errors naming dotted keys;
- ``overrides``: ``key.sub=value`` overrides and dotted flattening;
- ``safe_yaml``: YAML with size and alias limits and unique keys; ``sweeps``: a recipe's grid of
  runs;
- ``strict``: what every section refuses besides pydantic's checks (silent type conversions,
  counts above their bounds); ``suggest``: the valid key nearest to an unknown one.

Import from the submodules: this package imports nothing itself, so that a component module
(a method, a loss) may import ``config.base`` while ``config.pretrain`` imports the components.
"""
