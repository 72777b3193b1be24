"""The layers of the house (docs/architecture.md): no import circle among Laneway's modules, no
arrow pointing up, and no project import hidden inside a function outside AppConfig.ready()."""

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ("accounts", "telemetry", "webhooks", "lanes", "experiments", "console")
# What each app may import of ours (besides itself).
ALLOWED = {
    "accounts": set(),
    "telemetry": {"accounts"},
    "webhooks": {"accounts"},
    "lanes": {"accounts", "telemetry", "webhooks"},
    "experiments": {"accounts", "telemetry", "webhooks", "lanes"},
    "console": {"accounts", "telemetry", "webhooks", "lanes", "experiments"},
}


def modules() -> dict[str, Path]:
    found = {}
    for app in APPS:
        for path in (ROOT / app).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]):
    """(imported module, line, inside a function?, the function's name) for each import of our own modules."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    functions = {
        id(child): node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for child in ast.walk(node)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target, node.lineno, id(node) in functions, functions.get(id(node), "")


def circle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle of the graph (module -> modules it imports), or [] when there is none."""
    # A package's __init__ re-exporting its own modules is not a circle through the package.
    graph = {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in graph.items()}
    try:
        list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        return list(exc.args[1])
    return []


def test_the_import_graph_has_no_circle():
    known = modules()
    assert circle({name: {target for target, *_ in imports(name, path, known)} for name, path in known.items()}) == []


def test_each_app_imports_only_the_layers_below_it():
    known = modules()
    upward = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for name, path in known.items()
        for target, line, _, _ in imports(name, path, known)
        if target.split(".")[0] != name.split(".")[0] and target.split(".")[0] not in ALLOWED[name.split(".")[0]]
    ]
    assert upward == []


def test_project_imports_sit_at_the_top_of_the_file():
    known = modules()
    hidden = [
        f"{path.relative_to(ROOT)}:{line} imports {target} inside {function}()"
        for name, path in known.items()
        for target, line, in_function, function in imports(name, path, known)
        if in_function and not (path.name == "apps.py" and function == "ready")
    ]
    assert hidden == []


def test_the_checker_sees_a_circle_and_an_upward_arrow(tmp_path):
    """The checks above can fail: a circle (the one the job core once had), an arrow up and a hidden import."""
    core = {"lanes.actions": {"lanes.tasks"}, "lanes.tasks": {"lanes.admission"}, "lanes.admission": {"lanes.actions"}}
    assert set(circle(core)) == {"lanes.actions", "lanes.tasks", "lanes.admission"}
    assert circle({"lanes.models": {"lanes.models.jobs"}, "lanes.models.jobs": {"lanes.models"}}) == []
    known = modules()
    found = list(imports("lanes.actions", ROOT / "lanes" / "actions.py", known))
    assert ("lanes.dispatch" in {t for t, *_ in found}) and all(not t.startswith("experiments") for t, *_ in found)
    fake = tmp_path / "actions.py"
    fake.write_text("from experiments.runner import pump\n\ndef f():\n    from .dispatch import dispatch\n")
    seen = list(imports("lanes.actions", fake, known))
    assert ("experiments.runner", 1, False, "") in seen and ("lanes.dispatch", 4, True, "f") in seen
