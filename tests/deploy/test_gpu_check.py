"""bench/gpu_check.sh: the payload plan covers the gateway's import closure; the dry run serves.

The plan test is fast: it imports the whole ``service`` package in a subprocess, maps every
imported module to its distribution, and requires each one the GPU machine lacks to be in the
payload. The full dry run downloads cp312 wheels, builds a Python 3.12 venv and a fp16 model,
and starts the gateway from it: minutes, network to PyPI, so it is marked slow.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

SCRIPT = ROOT / "bench" / "gpu_check.sh"
sys.path.insert(0, str(ROOT / "bench"))
import gpu_payload  # noqa: E402

CLOSURE = """
import importlib, importlib.metadata as md, pkgutil, sys, json
import service
for module in pkgutil.walk_packages(service.__path__, "service."):
    importlib.import_module(module.name)
import uvicorn.loops.uvloop, uvicorn.protocols.http.httptools_impl  # what serve() runs with
names = md.packages_distributions()
print(json.dumps(sorted({d for m in sys.modules for d in names.get(m.split(".")[0], [])})))
"""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _with_dependencies(names: list[str]) -> set[str]:
    """``names`` and everything they require (as installed here), canonical names."""
    seen: set[str] = set()
    todo = [_canonical(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for requirement in requires:
            if "extra ==" not in requirement:
                todo.append(_canonical(re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0]))
    return seen


def test_plan_covers_the_import_closure_with_the_tested_versions() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    found = subprocess.run(
        [sys.executable, "-c", CLOSURE], env=env, capture_output=True, text=True, check=True
    )
    closure = {_canonical(name) for name in json.loads(found.stdout)}
    plan = gpu_payload.plan()
    site = {_canonical(pin.split("==")[0]): pin.split("==")[1] for pin in plan["site"]}
    # the machine's CPU onnxruntime (shadowed by onnxruntime-gpu) brings the same dependencies
    provided = _with_dependencies([*plan["on_the_machine"], "onnxruntime"]) - set(site)
    # imported only when present (the dry run's venv lacks them and serves): not needed there
    optional = {"brotli", "sniffio"}
    # this checkout itself, and the editable install's finder
    local = {"infergate", "setuptools"}
    missing = closure - provided - set(site) - optional - local
    assert not missing, (
        f"imported by the gateway but neither on the GPU machine nor in the payload: {missing}"
    )
    for name, version in site.items():
        installed = gpu_payload._version(name)
        assert version == installed, f"{name}: payload pins {version}, tests run {installed}"
    assert plan["gpu"] == ["onnxruntime-gpu==1.31.1"]
    assert {"python-rapidjson", "opentelemetry-api"} <= set(site)  # the two once missed


def test_the_script_prints_the_same_plan_and_rejects_unknown_actions() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    printed = subprocess.run([str(SCRIPT), "--plan"], capture_output=True, text=True, check=True)
    assert json.loads(printed.stdout) == json.loads(json.dumps(gpu_payload.plan()))
    unknown = subprocess.run([str(SCRIPT), "--bogus"], capture_output=True, text=True)
    assert unknown.returncode == 64 and "--dry-run" in unknown.stderr


def test_run_refuses_an_incomplete_payload(tmp_path: Path) -> None:
    """There, a lost part (the machine was given back between calls) stops the run early."""
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "MANIFEST").write_text(f"sha256 {'0' * 64}\nparts 5\n")
    (parts / "payload.tar.xz.partaa").write_bytes(b"only the first part")
    carried = tmp_path / "carried"  # nothing carried in this call
    env = {**os.environ, "INFERGATE_GPU_TMP": str(tmp_path), "INFERGATE_GPU_PAYLOAD": str(carried)}
    result = subprocess.run(
        [str(SCRIPT), "run"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode == 3 and "parts incomplete: have 1 of 5" in result.stderr


@pytest.mark.slow
@pytest.mark.skipif(
    not Path(gpu_payload.PYTHON312).is_file() or shutil.which("xz") is None,
    reason="needs Python 3.12 (pyenv) for the GPU machine's interpreter",
)
def test_dry_run_serves_from_a_python312_venv_holding_only_the_machines_packages() -> None:
    result = subprocess.run(
        [str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=1800
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout)
    assert report["ok"] and report["load"]["minilm_fp16 32 tokens"]["requests"] > 0
    instance = report["runtime"]["digits_mlp"]["instances"][0]
    assert instance["requested"][0] == "CUDAExecutionProvider"
    assert instance["providers"] == ["CPUExecutionProvider"]  # the CPU stand-in: loud fallback
    assert any("FALLBACK model digits_mlp" in line for line in report["log"])
    curve = report["workers_curve"]  # the curve's path: --workers 2, two client processes
    assert curve["ok"] and curve["load"]["digits_mlp"]["client_processes"] == 2
    assert curve["load"]["digits_mlp"]["requests"] >= 2
