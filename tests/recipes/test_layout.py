"""The shape of the recipes package: a public API in ``__all__``, small modules, no private imports across
packages, callbacks imported only to be used as callbacks."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import recipes
import recipes.loop

ROOT = Path(__file__).resolve().parents[2]
OURS = sorted(p for p in (ROOT / "recipes").rglob("*.py") if "data" not in p.relative_to(ROOT / "recipes").parts
              and p.name != "models.py")


def test_every_public_name_resolves():
    for module in (recipes, recipes.loop):
        assert module.__all__ == sorted(module.__all__, key=lambda n: (not n.isupper(), not n[0].isupper(), n))
        for name in module.__all__:
            assert getattr(module, name) is not None, name


def test_importing_recipes_loads_no_torch():
    code = "import sys, recipes; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_no_module_is_over_700_lines():
    long = {p.name: n for p in OURS if (n := len(p.read_text(encoding="utf-8").splitlines())) > 700}
    assert long == {}


def test_no_private_name_is_imported_from_another_package():
    for path in OURS:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            own = isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("recipes", "__future__")
            if isinstance(node, ast.ImportFrom) and node.module and not own:
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private and not any(p.startswith("_") for p in node.module.split(".")), (path, node.module)


def test_callbacks_are_imported_only_as_callbacks():
    import pytorch_lightning as pl

    import callbacks

    for path in OURS:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "callbacks":
                for alias in node.names:
                    obj = getattr(callbacks, alias.name)
                    assert alias.name == "default_monitors" or isinstance(obj, type) and issubclass(
                        obj, pl.Callback), (path, alias.name)
