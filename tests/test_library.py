"""The library's edges: settings checked however they arrive, honest exports, typed keywords."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import typing
from dataclasses import fields
from pathlib import Path

import pytest

import ragkit
from ragkit.config import Overrides, Settings
from ragkit.errors import ConfigError
from tests import fakes  # noqa: F401  (registers the "bow" embedder)
from tests.test_pipeline import PAGES, write

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.load(environ={}, index_dir=tmp_path / "indexes", embedder="bow")


@pytest.mark.parametrize(
    "overrides, message",
    [({"k": 0}, "k must be at least 1"), ({"index": "../x"}, "bad index name")],
)
def test_a_settings_object_plus_overrides_is_checked_like_keywords(
    tmp_path, settings, overrides, message
):
    ragkit.index(write(tmp_path / "docs", PAGES), settings)
    for call in (
        lambda: ragkit.search("shop hours", settings, **overrides),
        lambda: ragkit.ask("shop hours", settings, **overrides),
        lambda: ragkit.status(settings, **overrides),
        lambda: ragkit.doctor(settings, **overrides),
        lambda: ragkit.index(tmp_path / "docs", settings, **overrides),
        lambda: ragkit.search("shop hours", **overrides),  # keywords alone, as before
        lambda: Settings(**overrides),
    ):
        with pytest.raises(ConfigError, match=message):
            call()
    assert not (tmp_path / "x").exists()
    with pytest.raises(TypeError, match="unknown setting"):
        settings.replace(kk=3)


def test_public_names_are_exported_and_importable():
    """__all__, the lazy-export table and the names type checkers see are the same set."""
    exported = set(ragkit._EXPORTS) | {"__version__"}
    assert set(ragkit.__all__) == exported
    tree = ast.parse((ROOT / "ragkit" / "__init__.py").read_text())
    checked: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for stmt in node.body:
                if isinstance(stmt, ast.ImportFrom):
                    checked |= {a.asname or a.name for a in stmt.names}
    assert checked | {"__version__"} == exported
    for name in ragkit.__all__:
        assert getattr(ragkit, name) is not None, name
    with pytest.raises(AttributeError):
        ragkit.some_typo  # noqa: B018


def test_overrides_list_every_setting_with_its_type():
    hints = typing.get_type_hints(Overrides)
    settings_hints = typing.get_type_hints(Settings)
    assert list(hints) == [f.name for f in fields(Settings)]
    for name, hint in hints.items():
        allowed = set(typing.get_args(hint))
        given = set(typing.get_args(settings_hints[name])) or {settings_hints[name]}
        assert given | {type(None)} <= allowed, name


def test_type_checkers_catch_misspelt_names(tmp_path):
    """mypy (run as CI runs it) rejects an unknown module attribute and unknown settings."""
    snippet = tmp_path / "snippet.py"
    snippet.write_text(
        "import ragkit\n"
        "ragkit.some_typo\n"
        'ragkit.search("q", kk=3)\n'
        'ragkit.ask("q", chunk_tokns=3)\n'
        'ragkit.index("docs", indx="x")\n'
        "ragkit.status(indx_dir='x')\n"
        "ragkit.doctor(repair=True, kk=1)\n"
        'ragkit.search("q", k=3, index_dir="x", mode="dense")\n'
        'ragkit.index("docs", chunk_tokens=100, path="*.md")\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(ROOT / ".mypy_cache")]
        + ["--no-error-summary", str(snippet)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    lines = sorted(int(line.split(":")[1]) for line in errors)
    assert lines == [2, 3, 4, 5, 6, 7], proc.stdout
    assert 'has no attribute "some_typo"' in errors[0]


def test_python_m_ragkit_runs_the_cli_and_importing_it_does_not():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", "import ragkit.__main__; print('imported')"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert (proc.returncode, proc.stdout) == (0, "imported\n"), proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "ragkit", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0 and "Usage" in proc.stdout


def test_every_imported_third_party_module_is_declared():
    """Every module ragkit imports comes from a distribution pyproject.toml names (a dependency
    or an extra); click comes only with typer (which may vendor it), so it is not one."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    distributions = {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower() for r in requirements}
    # distribution name -> the module it installs, where the two differ
    module_of = {"faiss-cpu": "faiss", "sqlite-utils": "sqlite_utils", "psycopg[binary]": "psycopg"}
    declared = {module_of.get(d, d.replace("-", "_")) for d in distributions}
    assert "click" not in declared
    stdlib = set(sys.stdlib_module_names)
    for path in (ROOT / "ragkit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top in stdlib | declared | {"ragkit"}, f"{path.name} imports {name}"
