"""Atomic publishing into a Triton repository: stage in a temporary folder, then rename.

A crash or a failed check leaves either the old tree or the complete new version, never half of one.
The staging folder lives inside the repository (same filesystem, so ``rename`` is atomic) and is
removed on every exit path.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from converters.errors import ConversionError
from converters.triton_config import (
    apply_version_policy,
    check_compatible,
    read_config,
    render,
    serving_differences,
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def existing_versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def plan_version(repo: Path, name: str, version: int | None) -> tuple[int, mc.ModelConfig | None]:
    """The version to write and the model's current config, checked before any work is done."""
    if not _NAME.match(name):
        raise ConversionError(f"model name '{name}' must be letters, digits, '_', '-' or '.'")
    model_dir = repo / name
    existing = None
    if model_dir.exists():
        config_path = model_dir / "config.pbtxt"
        if not config_path.is_file():
            raise ConversionError(
                f"{model_dir} exists but has no config.pbtxt; remove it or pick another name"
            )
        existing = read_config(config_path)
    versions = existing_versions(model_dir)
    if version is None:
        version = (versions[-1] + 1) if versions else 1
    if version < 1:
        raise ConversionError(f"version must be a positive integer, not {version}")
    if version in versions:
        raise ConversionError(f"{model_dir / str(version)} already exists; pass another --version")
    return version, existing


def check_target(
    repo: Path, name: str, version: int | None, config: mc.ModelConfig
) -> tuple[int, list[str]]:
    """Before any slow work: the version to write, and warnings about options that won't apply.

    A model's versions share one config.pbtxt, which publishing a new version keeps. A new
    signature is refused; serving settings that differ are named (old -> new), since they are
    not applied.
    """
    version, existing = plan_version(repo, name, version)
    if existing is None:
        return version, []
    model_dir = repo / name
    check_compatible(existing, config, model_dir)
    differences = serving_differences(existing, config)
    if not differences:
        return version, []
    return version, [
        f"{model_dir / 'config.pbtxt'} is kept for version {version}, so these options are not "
        f"applied: {', '.join(differences)}. To change them, edit that config.pbtxt, or publish "
        f"as a new model (another --name) or remove {model_dir} first"
    ]


def publish(
    repo: Path,
    name: str,
    version: int | None,
    config: mc.ModelConfig,
    files: dict[str, bytes],
    version_policy: str = "all",
) -> tuple[int, Path]:
    """Write ``<name>/<version>/<files>`` and ``<name>/config.pbtxt`` atomically."""
    version, existing = plan_version(repo, name, version)
    model_dir = repo / name
    versions = sorted([*existing_versions(model_dir), version])
    if existing is not None:
        check_compatible(existing, config, model_dir)
        merged = mc.ModelConfig()
        merged.CopyFrom(existing)
        config = merged
    apply_version_policy(config, versions, version_policy)
    created_repo = not repo.exists()
    repo.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=repo))
    try:
        if existing is None:
            stage_model = staging / name
            for rel, data in files.items():
                _write(stage_model / str(version) / rel, data)
            _write(stage_model / "config.pbtxt", render(config).encode())
            try:
                os.rename(stage_model, model_dir)
            except OSError as exc:
                raise ConversionError(f"cannot create {model_dir}: {exc.strerror}") from None
        else:
            stage_version = staging / str(version)
            for rel, data in files.items():
                _write(stage_version / rel, data)
            try:
                os.rename(stage_version, model_dir / str(version))
            except OSError as exc:
                raise ConversionError(
                    f"cannot create {model_dir / str(version)}: {exc.strerror}"
                ) from None
            _write(staging / "config.pbtxt", render(config).encode())
            os.replace(staging / "config.pbtxt", model_dir / "config.pbtxt")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created_repo and not any(repo.iterdir()):
            repo.rmdir()
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return version, model_dir / str(version)


def swap_in(built: Path, target: Path) -> None:
    """Replace directory ``target`` by ``built`` (same filesystem) with two renames."""
    trash = target.with_name(f".trash-{target.name}-{os.getpid()}")
    if target.exists():
        os.rename(target, trash)
    os.rename(built, target)
    shutil.rmtree(trash, ignore_errors=True)
