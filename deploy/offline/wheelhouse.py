"""A wheelhouse for an image's Python, built on the host, so the image installs with no network.

``docker build`` then runs ``pip install --no-index --find-links /wheels .`` (the build args
``PIP_NO_INDEX``/``PIP_FIND_LINKS`` of deploy/gateway.Dockerfile): what an air-gapped machine
needs, and what a machine whose containers cannot verify PyPI's certificate needs too.

``pip download`` evaluates environment markers with the host's interpreter, and the image's may
differ: Debian bookworm's Python 3.11.2 needs ``async-timeout`` for ``redis``
(``python_full_version < "3.11.3"``), a newer 3.11 on the host does not. So the image is asked
for its marker environment and glibc (``docker run --network none IMAGE python3``), wheels are
downloaded for its tags, and every requirement's markers are evaluated again for the image until
the closure is complete. The roots are the gateway's base dependencies and its build backend
(``[build-system] requires``); never an extra, so never torch.

    python deploy/offline/wheelhouse.py --image IMAGE [--dest deploy/wheels]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tomllib
import zipfile
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]

# The image's PEP 508 marker environment (as packaging.markers.default_environment computes
# it), its glibc and its ABI, printed by the image's own interpreter with the stdlib only.
PROBE = r"""
import json, os, platform, sys
impl = sys.implementation
version = "{0.major}.{0.minor}.{0.micro}".format(impl.version)
if impl.version.releaselevel != "final":
    version += impl.version.releaselevel[0] + str(impl.version.serial)
print(json.dumps({
    "markers": {
        "implementation_name": impl.name,
        "implementation_version": version,
        "os_name": os.name,
        "platform_machine": platform.machine(),
        "platform_release": platform.release(),
        "platform_system": platform.system(),
        "platform_version": platform.version(),
        "python_full_version": platform.python_version(),
        "platform_python_implementation": platform.python_implementation(),
        "python_version": ".".join(platform.python_version_tuple()[:2]),
        "sys_platform": sys.platform,
    },
    "glibc": os.confstr("CS_GNU_LIBC_VERSION").split()[-1],
    "abi": "cp{0.major}{0.minor}".format(sys.version_info),
}))
"""
LEGACY_MANYLINUX = {5: "manylinux1", 12: "manylinux2010", 17: "manylinux2014"}


def probe_image(image: str) -> dict[str, Any]:
    done = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", image, "python3", "-c", PROBE],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def download_flags(target: dict[str, Any]) -> list[str]:
    """``pip download`` options for wheels the image can install (binary only, its tags)."""
    markers = target["markers"]
    machine = markers["platform_machine"]
    major, minor = (int(part) for part in target["glibc"].split(".")[:2])
    platforms = [f"manylinux_{major}_{m}_{machine}" for m in range(minor, 4, -1)]
    platforms += [f"{name}_{machine}" for m, name in LEGACY_MANYLINUX.items() if m <= minor]
    flags = ["--only-binary=:all:", "--implementation", "cp", "--abi", target["abi"]]
    flags += ["--python-version", markers["python_full_version"]]
    for platform in platforms:
        flags += ["--platform", platform]
    return flags


def roots() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    names = project["build-system"]["requires"] + project["project"]["dependencies"]
    return [Requirement(name) for name in names]


def wheel_metadata(dest: Path) -> dict[str, tuple[Version, list[Requirement]]]:
    """Each wheel's project name -> (version, Requires-Dist), the newest version when several."""
    found: dict[str, tuple[Version, list[Requirement]]] = {}
    for wheel in sorted(dest.glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        if name in found and version <= found[name][0]:
            continue
        with zipfile.ZipFile(wheel) as archive:
            path = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            headers = HeaderParser().parsestr(archive.read(path).decode())
        requires = [Requirement(line) for line in headers.get_all("Requires-Dist") or []]
        found[name] = (version, requires)
    return found


def missing(dest: Path, markers: dict[str, str], wanted: list[Requirement]) -> list[str]:
    """Requirements of the closure of ``wanted`` (every marker evaluated for the image) that no
    wheel in ``dest`` meets."""
    wheels = wheel_metadata(dest)
    lacking: list[str] = []
    seen: set[tuple[str, frozenset[str]]] = set()
    todo: list[tuple[Requirement, str]] = [(req, "") for req in wanted]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({**markers, "extra": extra}):
            continue
        name = canonicalize_name(req.name)
        if (name, frozenset(req.extras)) in seen:
            continue
        seen.add((name, frozenset(req.extras)))
        if name not in wheels or not req.specifier.contains(wheels[name][0], prereleases=True):
            lacking.append(f"{req.name}{req.specifier}")
            continue
        for dependency in wheels[name][1]:
            todo += [(dependency, wanted) for wanted in ("", *sorted(req.extras))]
    return sorted(set(lacking))


def build(image: str, dest: Path) -> None:
    target = probe_image(image)
    markers = target["markers"]
    flags = download_flags(target)
    dest.mkdir(parents=True, exist_ok=True)
    wanted = [str(req) for req in roots()]
    for _ in range(10):
        pip = [sys.executable, "-m", "pip", "download", "-q", "--dest", str(dest), *flags]
        subprocess.run([*pip, *wanted], check=True)
        wanted = missing(dest, markers, roots())
        if not wanted:
            count = len(list(dest.glob("*.whl")))
            size = sum(path.stat().st_size for path in dest.glob("*.whl"))
            print(f"wheelhouse {dest}: {count} wheels, {size / 1e6:.0f} MB, complete for {image}")
            return
        print(f"for {image} ({markers['python_full_version']}) also: {' '.join(wanted)}")
    raise SystemExit(f"wheelhouse still incomplete: {' '.join(wanted)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True, help="the image whose python3 installs them")
    parser.add_argument("--dest", type=Path, default=REPO / "deploy" / "wheels")
    args = parser.parse_args()
    build(args.image, args.dest)


if __name__ == "__main__":
    main()
