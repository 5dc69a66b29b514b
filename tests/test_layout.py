"""The layout the code is held to: layers without cycles, small modules, one registry of config
keys, and reference pages that say what the code says."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from service import parameters
from service.cli import reference
from service.observability import tracing
from tests.helpers import ROOT

PACKAGES = ("service", "converters", "loadtest")


def _modules(*packages: str) -> list[Path]:
    return sorted(path for package in packages for path in (ROOT / package).rglob("*.py"))


def test_import_contracts_hold() -> None:
    """Layers, no cycles between siblings, and what the converters may share (pyproject.toml)."""
    done = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports"))],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BROKEN" not in done.stdout and done.stdout.count("KEPT") >= 3, done.stdout


def test_few_modules_left_at_the_top_of_service() -> None:
    top = sorted(path.name for path in (ROOT / "service").glob("*.py"))
    assert len(top) <= 8, top


@pytest.mark.parametrize("path", _modules(*PACKAGES), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_are_small_documented_and_short_functioned(path: Path) -> None:
    source = path.read_text()
    tree = ast.parse(source)
    assert ast.get_docstring(tree), f"{path.name} has no module docstring"
    assert len(source.splitlines()) <= 400, f"{path.name} has over 400 lines"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno >= 60
    ]
    assert not long, long


def _key_literals(path: Path) -> list[str]:
    """``infergate.*`` strings of a module, logger names left out."""
    tree = ast.parse(path.read_text())
    loggers = {
        id(arg)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "getLogger"
        for arg in node.args
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith(parameters.PREFIX)
        and node.value != parameters.PREFIX
        and " " not in node.value
        and id(node) not in loggers
    ]


def test_every_config_key_is_declared_once_and_read_through_the_registry() -> None:
    """``infergate.*`` strings are config.pbtxt keys (``service/parameters.py``), or the names
    of the gateway's span attributes, each declared once in ``service/observability/tracing.py``
    and used through its constants."""
    attributes = ROOT / "service" / "observability" / "tracing.py"
    spelled = {path: _key_literals(path) for path in _modules("service", "converters")}
    undeclared = {
        str(path.relative_to(ROOT)): key
        for path, keys in spelled.items()
        for key in keys
        if key not in (tracing.ATTRIBUTES if path == attributes else parameters.KEYS)
    }
    assert not undeclared, undeclared
    named = _key_literals(attributes)
    assert sorted(named) == sorted(tracing.ATTRIBUTES), "each attribute spelled once, all listed"
    registry = ROOT / "service" / "parameters.py"
    outside = [
        p.name
        for p, keys in spelled.items()
        if keys and p.parts[-2] != "converters" and p != attributes
    ]
    assert outside == [registry.name], f"keys spelled outside the registry: {outside}"


def test_unknown_infergate_keys_are_named() -> None:
    from tritonclient.grpc import model_config_pb2

    config = model_config_pb2.ModelConfig()
    config.parameters["infergate.io_bindng"].string_value = "true"
    config.parameters["infergate.io_binding"].string_value = "true"
    config.parameters["gpu_mem_limit"].string_value = "1"
    assert parameters.unknown_keys(config) == ["infergate.io_bindng"]


@pytest.mark.parametrize("page", sorted(reference.PAGES))
def test_reference_pages_say_what_the_code_says(page: str) -> None:
    text = (ROOT / "docs" / page).read_text()
    assert reference.BEGIN in text, f"docs/{page} has no generated section: run `make docs`"
    assert reference.render(page, text) == text, f"docs/{page} is out of date: run `make docs`"
