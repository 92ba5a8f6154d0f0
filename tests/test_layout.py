"""The design's one-way arrow: portal -> provisioning, never back."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_it_keeps_django_and_the_portal_out_of_provisioning():
    offenders = []
    for path in (ROOT / "provisioning").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path}: {n}" for n in names if n.split(".")[0] in ("django", "portal")]
    assert offenders == []
    assert list((ROOT / "provisioning").rglob("*.py")), "provisioning/ holds no code to check"


# -- provisioning/: no module reaches into another's private names, no import cycle ----------


def _provisioning_modules() -> dict[str, Path]:
    """Dotted name -> file of every module of provisioning/ (a package by its __init__)."""
    modules = {}
    for path in (ROOT / "provisioning").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _provisioning_imports(name: str, path: Path, modules: dict) -> tuple[set, list]:
    """The provisioning/ modules that `name` imports (at module level or in a function), and
    the other modules' private names it uses: `from m import _x`, or `m._x` after importing m."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    imported, private, aliases = set(), [], {}
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    imported.add(alias.name)
                    aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = ".".join(filter(None, [base if node.level else "", node.module or ""]))
            for alias in node.names:
                if f"{module}.{alias.name}" in modules:  # a submodule, imported by name
                    imported.add(f"{module}.{alias.name}")
                    aliases[alias.asname or alias.name] = f"{module}.{alias.name}"
                elif module in modules:
                    imported.add(module)
                    if alias.name.startswith("_") and module != name:
                        private.append(f"{name}: from {module} import {alias.name}")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and aliases.get(node.value.id, name) != name
            and node.attr.startswith("_")
            and not node.attr.endswith("__")
        ):
            private.append(f"{name}: {aliases[node.value.id]}.{node.attr}")
    return imported - {name}, private


def _provisioning_graph() -> tuple[dict, list]:
    modules = _provisioning_modules()
    graph, private = {}, []
    for name, path in sorted(modules.items()):
        graph[name], found = _provisioning_imports(name, path, modules)
        private += found
    return graph, private


def _cycle(graph: dict) -> list[str]:
    """One import cycle of graph, as the modules along it; [] if there is none."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str]:
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[module] = "done"
        return []

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return []


def test_it_keeps_each_provisioning_module_out_of_the_others_private_names():
    graph, private = _provisioning_graph()
    assert "provisioning.agent.hostctl" in graph, "the walk found no agent to check"
    assert private == []


def test_it_finds_no_import_cycle_among_provisioning_modules():
    graph, _ = _provisioning_graph()
    assert _cycle(graph) == []


def test_it_finds_a_cycle_and_a_private_name_where_there_is_one(tmp_path):
    """The checks themselves: a cycle of three, and `m._x` after `import ... as m`."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    modules = {"p": ROOT, "p.m": ROOT, "p.n": ROOT}
    source = "from p import m as h\nfrom p.m import _y\ndef f():\n    return h._x(1)\n"
    path = tmp_path / "n.py"
    path.write_text(source)
    imported, private = _provisioning_imports("p.n", path, modules)
    assert imported == {"p.m"}
    assert sorted(private) == ["p.n: from p.m import _y", "p.n: p.m._x"]


# -- portal/: apps import only downward ---------------------------------------------------------

# The apps from the bottom up (docs/architecture.md, "Layers"): an app imports only itself and
# the apps before it.
APP_ORDER = [
    "notifications",
    "accounts",
    "inventory",
    "booking",
    "jobs",
    "packages",
    "clusters",
    "operations",
    "api",
]
# The project-level modules an app may import; they import no app, only each other. The
# others (urls, views, celery, settings, ...) sit around the apps and are imported by none
# (docs/decisions.md, "App layers").
PROJECT_BASE = {"errors", "http", "pages", "rows", "ssh"}


def _portal_imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every portal import in the file, in functions too; a name
    imported from a package (`from portal import views`) counts as that module."""
    package = list(path.relative_to(root).parent.parts)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.startswith("portal.")]


def layer_offenders(root: Path = ROOT) -> list[str]:
    """Every import in portal/ against the app order, as `file:line: app -> module`.

    Migrations too: theirs name other apps by string (dependencies, `to="jobs.job"`), and any
    import is checked like an app module's."""
    offenders = []
    for path in sorted((root / "portal").rglob("*.py")):
        parts = path.relative_to(root / "portal").parts
        if len(parts) > 1 and parts[0] not in APP_ORDER:
            offenders.append(f"{path.relative_to(root)}: the app {parts[0]} has no layer")
            continue
        if len(parts) == 1 and path.stem not in PROJECT_BASE:
            continue  # urls, views, celery, settings: around the apps, may import them all
        here = APP_ORDER.index(parts[0]) if len(parts) > 1 else -1
        for line, name in _portal_imports(path, root):
            target = name.split(".")[1]
            if target in APP_ORDER:
                allowed = APP_ORDER.index(target) <= here
            else:
                allowed = target in PROJECT_BASE  # the project-level modules below the apps
            if not allowed:
                where = parts[0] if len(parts) > 1 else f"portal.{path.stem}"
                offenders.append(f"{path.relative_to(root)}:{line}: {where} -> {name}")
    return offenders


def test_apps_import_only_the_apps_below_them():
    assert layer_offenders() == []
    assert {p.name for p in (ROOT / "portal").iterdir() if (p / "apps.py").exists()} == set(
        APP_ORDER
    ), "an app was added or removed: give it its place in APP_ORDER"


def test_the_layer_check_sees_an_import_against_the_order(tmp_path):
    (tmp_path / "portal" / "inventory").mkdir(parents=True)
    (tmp_path / "portal" / "inventory" / "views.py").write_text(
        "from portal.accounts.models import User\n"
        "from . import models\n"
        "def page():\n"
        "    from portal.operations import charts\n"
        "    from ..booking import services\n"
    )
    (tmp_path / "portal" / "jobs").mkdir()
    (tmp_path / "portal" / "jobs" / "admin.py").write_text(
        "from portal import views\nfrom portal.http import client_ip\n"
    )
    (tmp_path / "portal" / "http.py").write_text("import portal.inventory.models\n")
    assert layer_offenders(tmp_path) == [
        "portal/http.py:1: portal.http -> portal.inventory.models",
        "portal/inventory/views.py:4: inventory -> portal.operations.charts",
        "portal/inventory/views.py:5: inventory -> portal.booking.services",
        "portal/jobs/admin.py:1: jobs -> portal.views",
    ]
