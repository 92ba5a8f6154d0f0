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
