"""The code's shape, checked: evaluation never imports training, each path is spelled once, and no
measured figure hides in a code comment (figures live in bench/README.md and docs/, where they are
dated by their commit)."""

from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dgpo_agent", "training", "evals", "serving")


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement anywhere in ``path`` names, function-local ones included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_evaluation_never_imports_training():
    """``training`` builds on ``evals`` (scoring, the harness); the other way would be a cycle."""
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in imported_modules(path) if m.startswith("dgpo_agent.training"))
        for path in (ROOT / "evals").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    modules = [f"dgpo_agent.evals.{p.stem}" for p in (ROOT / "evals").glob("*.py") if p.stem != "__init__"]
    code = f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}]; print(sorted(m for m in sys.modules if m.startswith('dgpo_agent.training')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()
    assert loaded == "[]"


def test_the_store_folder_is_named_in_one_place():
    spelled = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in (*PACKAGES, "bench")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if '"chroma"' in line
    ]
    assert spelled == ["dgpo_agent/world/files.py:" + str(_line_of(ROOT / "dgpo_agent/world/files.py", '"chroma"'))]


def _line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


# A measured figure: a number with a unit of time, a share or a speed-up.
FIGURE = re.compile(r"\d[\d,.]*\s*(?:ms|min|s|h)\b|\d+(?:\.\d+)?\s*%|\d+(?:\.\d+)?\s*×")


def test_no_measured_figures_in_code_comments():
    found = []
    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text()
            comments = [(t.start[0], t.string) for t in tokenize.generate_tokens(io.StringIO(text).readline) if t.type == tokenize.COMMENT]
            docstrings = [
                (node.body[0].lineno, ast.get_docstring(node, clean=False) or "")
                for node in ast.walk(ast.parse(text))
                if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            ]
            found += [f"{path.relative_to(ROOT)}:{line}" for line, comment in comments + docstrings if FIGURE.search(comment)]
    assert found == []
