"""deploy/offline/wheelhouse.py: the closure is judged with the image's markers, not the host's.

Wheels here are real zip files with a METADATA; the download itself runs in make compose-up
(tests/deploy/test_compose_up.py), whose image build installs with ``--no-index``.
"""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement

from tests.deploy.deploy_support import OFFLINE

BOOKWORM = {  # Debian bookworm's python3 in the debootstrap base
    "implementation_name": "cpython",
    "implementation_version": "3.11.2",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_release": "6.1.0",
    "platform_system": "Linux",
    "platform_version": "#1 SMP",
    "python_full_version": "3.11.2",
    "platform_python_implementation": "CPython",
    "python_version": "3.11",
    "sys_platform": "linux",
}


@pytest.fixture(scope="module")
def wheelhouse() -> ModuleType:
    spec = importlib.util.spec_from_file_location("wheelhouse", OFFLINE / "wheelhouse.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wheel(dest: Path, name: str, version: str, *requires: str) -> None:
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {line}\n" for line in requires)
    with zipfile.ZipFile(dest / f"{name}-{version}-py3-none-any.whl", "w") as archive:
        archive.writestr(f"{name}-{version}.dist-info/METADATA", metadata)


def test_a_dependency_behind_the_images_markers_is_missing(
    wheelhouse: ModuleType, tmp_path: Path
) -> None:
    """What ``pip download`` on a 3.11.7 host leaves out: redis's async-timeout for 3.11.2."""
    _wheel(
        tmp_path,
        "redis",
        "7.1.0",
        'async-timeout>=4.0.3; python_full_version < "3.11.3"',
        'hiredis>=3.2.0; extra == "hiredis"',
    )
    _wheel(tmp_path, "hiredis", "3.5.0")
    wanted = [Requirement("redis[hiredis]>=5.0")]
    newer = {**BOOKWORM, "python_full_version": "3.11.7", "implementation_version": "3.11.7"}
    assert wheelhouse.missing(tmp_path, newer, wanted) == []
    assert wheelhouse.missing(tmp_path, BOOKWORM, wanted) == ["async-timeout>=4.0.3"]
    _wheel(tmp_path, "async_timeout", "5.0.1")
    assert wheelhouse.missing(tmp_path, BOOKWORM, wanted) == []


def test_extras_and_versions_count(wheelhouse: ModuleType, tmp_path: Path) -> None:
    _wheel(tmp_path, "redis", "7.1.0", 'hiredis>=3.2.0; extra == "hiredis"')
    _wheel(tmp_path, "hiredis", "2.0.0")
    assert wheelhouse.missing(tmp_path, BOOKWORM, [Requirement("redis>=5")]) == []
    assert wheelhouse.missing(tmp_path, BOOKWORM, [Requirement("redis[hiredis]")]) == [
        "hiredis>=3.2.0"
    ]
    assert wheelhouse.missing(tmp_path, BOOKWORM, [Requirement("redis>=8")]) == ["redis>=8"]


def test_download_flags_cover_every_manylinux_tag_of_the_images_glibc(
    wheelhouse: ModuleType,
) -> None:
    flags = wheelhouse.download_flags({"markers": BOOKWORM, "glibc": "2.36", "abi": "cp311"})
    platforms = {flags[i + 1] for i, flag in enumerate(flags) if flag == "--platform"}
    assert {"manylinux_2_36_x86_64", "manylinux_2_28_x86_64", "manylinux2014_x86_64"} <= platforms
    assert "manylinux_2_37_x86_64" not in platforms
    assert flags[flags.index("--python-version") + 1] == "3.11.2"
