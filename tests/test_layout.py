"""The package map's import direction (DESIGN.md §2), held by parsing every module's imports."""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1] / "livesight"
FORBIDDEN = {
    "kernels": {"kvcache", "vision", "models", "streaming", "app", "eval"},
    "kvcache": {"vision", "models", "streaming", "app", "eval"},
    "vision": {"models", "streaming", "app", "eval"},
    "models": {"streaming", "app", "eval"},
    "streaming": {"app", "eval"},
    "eval": {"app"},
}


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return {n.split(".")[1] for n in names if n.startswith("livesight.") and n.count(".") >= 1}


def test_imports_flow_one_way():
    bad = []
    for part, forbidden in FORBIDDEN.items():
        for path in (ROOT / part).rglob("*.py"):
            for name in _imports(path) & forbidden:
                bad.append(f"{path.relative_to(ROOT)} imports livesight.{name}")
    assert not bad, bad


def test_files_stay_small():
    too_long = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py") if len(p.read_text().splitlines()) > 400]
    assert not too_long, too_long


def test_config_and_options_load_no_model_library():
    """Flags are parsed and checked before torch or transformers load (seconds), so a bad flag answers
    at once. A fresh interpreter: this one has loaded both already."""
    code = ("import sys, livesight.streaming.config, livesight.streaming.options; "
            "print(sorted({'torch', 'transformers'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT.parent, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
