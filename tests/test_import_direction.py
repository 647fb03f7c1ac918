"""Imports point one way: scripts -> convert -> svg2_jax -> pallas_kernels. A lower package
never imports a higher one, at any depth (inside functions too)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# higher number = higher package; each may import only its own level and below
LEVELS = {"pallas_kernels": 0, "svg2_jax": 1, "convert": 2, "scripts": 3}


def imported_packages(tree: ast.AST, module: str):
    """(line, top-level package) of every import in `tree`, the source of the dotted
    `module`: `import x`, `from x import y`, relative imports (resolved against `module`)
    and `importlib.import_module` / `__import__` with a literal name."""
    package = module.split(".")[:-1] if not module.endswith("__init__") else module.split(".")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                yield node.lineno, (base or [node.module or ""])[0]
            else:
                yield node.lineno, node.module.split(".")[0]
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and (getattr(node.func, "attr", None) == "import_module"
                   or getattr(node.func, "id", None) in ("import_module", "__import__"))):
            yield node.lineno, node.args[0].value.split(".")[0]


def upward_imports(source: str, path: str, module: str) -> list[str]:
    """'path:line imports higher-package' for each import of a higher package."""
    own = LEVELS[module.split(".")[0]]
    return [f"{path}:{line} imports {pkg}"
            for line, pkg in sorted(imported_packages(ast.parse(source, path), module))
            if LEVELS.get(pkg, -1) > own]


def test_every_package_imports_only_downwards():
    problems, files = [], 0
    for package in LEVELS:
        for file in sorted((ROOT / package).rglob("*.py")):
            rel = file.relative_to(ROOT)
            module = ".".join(rel.with_suffix("").parts)
            problems += upward_imports(file.read_text(), str(rel), module)
            files += 1
    assert files > 40, f"only {files} files found under {ROOT}"
    assert not problems, "imports against scripts -> convert -> svg2_jax -> pallas_kernels:\n" \
        + "\n".join(problems)


def test_the_check_sees_imports_at_any_depth():
    source = ("import numpy\n"
              "from svg2_jax import config\n"
              "def load():\n"
              "    from convert import common\n"
              "    class A:\n"
              "        def f(self):\n"
              "            import scripts.generate\n"
              "    return importlib.import_module('convert.wan')\n"
              "from . import sibling\n"
              "from .. import up\n")
    assert upward_imports(source, "svg2_jax/models/x.py", "svg2_jax.models.x") == [
        "svg2_jax/models/x.py:4 imports convert", "svg2_jax/models/x.py:7 imports scripts",
        "svg2_jax/models/x.py:8 imports convert"]
    assert upward_imports(source, "convert/x.py", "convert.x") == [
        "convert/x.py:7 imports scripts"]
    assert upward_imports("from scripts import timing\n", "pallas_kernels/k.py",
                          "pallas_kernels.k") == ["pallas_kernels/k.py:1 imports scripts"]
