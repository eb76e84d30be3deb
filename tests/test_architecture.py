"""The package layout as a checked contract: import-linter's layers and purity contracts
(`[tool.importlinter]` in pyproject.toml) hold, and a deliberate violation breaks them."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter on the `relay` package found under `root`, with the project's contracts."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
         "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True))"],
        cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_the_import_contracts_hold() -> None:
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 kept, 0 broken" in out.stdout


def test_a_violation_breaks_each_contract(tmp_path: Path) -> None:
    """The store importing the web layer, and the core importing aiohttp, are refused."""
    shutil.copytree(ROOT / "relay", tmp_path / "relay",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / "relay" / "store" / "models.py", "a") as fh:
        fh.write("\nfrom relay.web import appkeys  # noqa\n")
    with open(tmp_path / "relay" / "core" / "domain.py", "a") as fh:
        fh.write("\nimport aiohttp  # noqa\n")
    out = lint_imports(tmp_path)
    assert out.returncode != 0
    assert "layers: each package imports only the layers below it BROKEN" in out.stdout
    assert "the core is pure: no aiohttp, no peewee BROKEN" in out.stdout
    assert "relay.store.models -> relay.web.appkeys" in out.stdout
    assert "relay.core.domain -> aiohttp" in out.stdout


# Logger names are in every log line: operators filter on them. They stay what they were
# before the package layout (relay/log.py).
LOGGERS = {
    "relay.app", "relay.attesto", "relay.auth", "relay.cli", "relay.deliver",
    "relay.housekeeping", "relay.ingest_link", "relay.ingest_writer", "relay.middlewares",
    "relay.migrations", "relay.outbox", "relay.repoll", "relay.routes.webhooks",
    "relay.scheduler", "relay.store", "relay.verification", "relay.watchdog", "relay.workers",
    "relay.console",  # new with the console (issue 20)
}


def test_logger_names_are_the_published_ones() -> None:
    names: set[str] = set()
    for path in (ROOT / "relay").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "getLogger"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                names.add(node.args[0].value)
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "getLogger"
                    and node.args):
                names.add(f"<computed in {path.relative_to(ROOT)}>")
    assert {n for n in names if n.startswith(("relay.", "<"))} == LOGGERS


MAX_LINES = 350  # one concern per module: past this, a module is doing several things


def test_no_module_is_over_the_size_where_it_holds_several_concerns() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines())
             for p in (ROOT / "relay").rglob("*.py")}
    assert {path: n for path, n in sizes.items() if n > MAX_LINES} == {}


def test_no_import_circle() -> None:
    """No module reaches itself through its imports (function-level imports included)."""
    import grimp

    graph = grimp.build_graph("relay")
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while (top := stack.pop()) != module:
                component.append(top)
            if component:
                circles.append(sorted([module, *component]))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    assert circles == []
