"""The one YAML loader of Laneway's documents (the routing policy, experiment definitions).

Documents are composed to nodes, not loaded to values, so every error can say its line.
"""

from __future__ import annotations

from typing import Any

import yaml


class YamlError(Exception):
    """A document that cannot be used; `errors` lists every problem found, each with its line."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


MAX_DEPTH = 64  # Laneway's documents nest a few levels; thousands is an attack on the parser


def compose(text: str, error: type[YamlError] = YamlError) -> yaml.Node | None:
    """The document's root node (None for an empty one); `error` (a YamlError) for text that is not YAML."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise error([f"{where}not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    except RecursionError:
        raise error([f"the document nests deeper than {MAX_DEPTH} levels"]) from None
    stack = [(root, 1)] if root is not None else []
    while stack:  # iterative: the depth check must not recurse itself
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise error([f"line {line(node)}: the document nests deeper than {MAX_DEPTH} levels"])
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend((child, depth + 1) for pair in node.value for child in pair)
    return root


def line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def value(node: yaml.Node) -> Any:
    """The Python value of a node (and of everything under it)."""
    return yaml.safe_load(yaml.serialize(node))


def mapping(node: yaml.Node, what: str, errors: list[str]) -> list[tuple[str, yaml.Node, int]]:
    """(key, value node, key line) of a mapping node; an error (and nothing) for any other node."""
    if not isinstance(node, yaml.MappingNode):
        errors.append(f"line {line(node)}: {what} must be a mapping")
        return []
    return [(k.value, v, line(k)) for k, v in node.value]
