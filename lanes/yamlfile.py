"""The one YAML loader of Laneway's documents (the routing policy, experiment definitions).

Documents are composed to nodes, not loaded to values, so every error can say its line.
"""

from __future__ import annotations

import math
import re
from typing import Any

import yaml


class YamlError(Exception):
    """A document that cannot be used; `errors` lists every problem found, each with its line."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


MAX_DEPTH = 64  # Laneway's documents nest a few levels; thousands is an attack on the parser
MAX_NODES = 50_000  # counted with aliases expanded: a few hundred bytes of aliases can mean billions
CORE = "tag:yaml.org,2002:"
PLAIN_TAGS = {CORE + name for name in ("str", "int", "float", "bool", "null", "seq", "map", "timestamp")}
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def compose(text: str, error: type[YamlError] = YamlError) -> yaml.Node | None:
    """The document's root node (None for an empty one); `error` (a YamlError) for text that is not YAML,
    or that is YAML a Laneway document never needs: other tags, keys that are not text, numbers that are
    not finite, control characters, nesting past MAX_DEPTH or aliases that expand past MAX_NODES."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise error([f"{where}not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    except RecursionError:
        raise error([f"the document nests deeper than {MAX_DEPTH} levels"]) from None
    problems: list[str] = []
    stack = [(root, 1)] if root is not None else []
    seen = 0
    while stack and not problems:  # iterative: the checks must not recurse themselves
        node, depth = stack.pop()
        seen += 1
        where = f"line {line(node)}: "
        if depth > MAX_DEPTH:
            problems.append(f"{where}the document nests deeper than {MAX_DEPTH} levels")
        elif seen > MAX_NODES:
            problems.append(f"{where}the document (its aliases expanded) is over {MAX_NODES} values")
        elif node.tag not in PLAIN_TAGS:
            problems.append(f"{where}tag {node.tag!r} is not allowed: plain text, numbers, lists and mappings only")
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            for key, child in node.value:
                if not isinstance(key, yaml.ScalarNode):
                    problems.append(f"line {line(key)}: a key must be plain text, not a list or mapping")
                stack.extend(((key, depth + 1), (child, depth + 1)))
        elif isinstance(node, yaml.ScalarNode):
            problems.extend(_scalar_problem(node, where))
    if problems:
        raise error(problems)
    return root


def _scalar_problem(node: yaml.ScalarNode, where: str) -> list[str]:
    if CONTROL.search(node.value):
        return [f"{where}text holds a control character"]
    if node.tag in (CORE + "int", CORE + "float", CORE + "timestamp"):
        try:
            value = yaml.safe_load(yaml.serialize(node))
        except (yaml.YAMLError, ValueError, OverflowError):
            return [f"{where}{node.value!r} is not a {node.tag.removeprefix(CORE)}"]
        if isinstance(value, float) and not math.isfinite(value):
            return [f"{where}numbers must be finite, not {node.value}"]
    return []


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
