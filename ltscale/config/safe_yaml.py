"""YAML read as data with limits: no tags or objects (``SafeLoader``), at most
``MAX_YAML_ALIASES`` alias references, so a "billion laughs" document cannot expand into
gigabytes, and no key twice in one mapping (YAML would keep the last value silently); recipes are
also capped at ``MAX_RECIPE_BYTES``."""

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


class DuplicateKeyError(yaml.YAMLError):
    """A mapping holds the same key twice."""


def _check_unique_keys(node: yaml.Node, path: tuple[str, ...] = (), seen: set | None = None):
    """Raise ``DuplicateKeyError`` naming the dotted key and both lines of its first repeat."""
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias: its node was checked where it was defined
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_unique_keys(item, (*path, str(i)), seen)
    elif isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], yaml.Node] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            if name is not None and (key.tag, name) in first:
                dotted = ".".join((*path, name))
                raise DuplicateKeyError(
                    f"key {dotted} is given twice, on lines "
                    f"{first[key.tag, name].start_mark.line + 1} and {key.start_mark.line + 1} "
                    "(YAML would keep the last silently); keep one")
            if name is not None:
                first[key.tag, name] = key
            _check_unique_keys(value, (*path, str(name)), seen)


def safe_load_limited(text: str):
    """``yaml.safe_load`` with the alias limit and unique keys (values are data: no tags, no
    objects)."""
    loader = _LimitedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_unique_keys(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()
