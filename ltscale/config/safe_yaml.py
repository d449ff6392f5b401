"""YAML read as data with limits: no tags or objects (``SafeLoader``), and at most
``MAX_YAML_ALIASES`` alias references, so a "billion laughs" document cannot expand into
gigabytes; recipes are also capped at ``MAX_RECIPE_BYTES``."""

from __future__ import annotations

import yaml

MAX_RECIPE_BYTES = 1 << 20   # a recipe is a page of settings; anything larger is a mistake
MAX_YAML_ALIASES = 20        # aliases expand exponentially ("billion laughs"); 20 bound it to ~1,600x


class _LimitedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses more than ``MAX_YAML_ALIASES`` alias references."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases = getattr(self, "_aliases", 0) + 1
            if self._aliases > MAX_YAML_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_YAML_ALIASES} aliases (*name); a recipe "
                                     "needs none")
        return super().compose_node(parent, index)


def safe_load_limited(text: str):
    """``yaml.safe_load`` with the alias limit (values are data: no tags, no objects)."""
    loader = _LimitedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
