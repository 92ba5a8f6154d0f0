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


# -- portal/: apps import only downward ---------------------------------------------------------

# The apps from the bottom up (docs/architecture.md, "Layers"): an app imports only itself and
# the apps before it.
APP_ORDER = ["accounts", "inventory", "booking", "jobs", "operations", "api"]
# The project-level modules an app may import; they import no app, only each other. The
# others (urls, views, celery, settings, ...) sit around the apps and are imported by none
# (docs/decisions.md, "App layers").
PROJECT_BASE = {"errors", "http", "pages"}


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
