"""perf_analyzer (Triton's own load tool) against Triton directly and against the gateway.

Three targets, measured side by side in one run on the same machine: ``triton`` (tritonserver
from nvidia-pytriton serving the python-backend twin of the model), ``gateway-ort`` (the gateway
with its embedded ONNX Runtime backend over the ONNX repository) and ``gateway-triton`` (the
gateway in front of that same Triton). Each is swept over concurrency with HTTP and gRPC.
perf_analyzer itself comes from the ``tritonclient==2.51.0`` wheel (see
``shared/notes/triton-on-cpu.md``), unpacked into the git-ignored ``.perf_analyzer/``.

Run after ``make models``: ``python bench/perf_analyzer.py [--model digits_mlp]
[--concurrency 1:16:5]``. Writes ``bench/results/perf_analyzer/*/c*.csv`` and
``bench/results/perf_analyzer.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make tests.* importable
    sys.path.insert(0, str(ROOT))

CACHE = ROOT / ".perf_analyzer"
RESULTS = ROOT / "bench" / "results"
PA_VERSION = "2.51.0"
# perf_analyzer links these sonames; nvidia-pytriton ships them under hashed names.
LIBS = {"libb64.so.0d": "libb64-", "libcudart.so.12": "libcudart-"}


def setup_perf_analyzer(cache: Path = CACHE) -> tuple[Path, dict[str, str]]:
    """Unpack perf_analyzer from the tritonclient 2.51 wheel once; return it and its env."""
    binary = cache / "bin" / "perf_analyzer"
    lib = cache / "lib"
    if not binary.is_file():
        wheels = cache / "wheel"
        found = sorted(wheels.glob(f"tritonclient-{PA_VERSION}-*.whl"))
        if not found:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps"]
                + [f"tritonclient=={PA_VERSION}", "-d", str(wheels)],
                check=True,
            )
            found = sorted(wheels.glob(f"tritonclient-{PA_VERSION}-*.whl"))
        member = f"tritonclient-{PA_VERSION}.data/data/bin/perf_analyzer"
        binary.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(found[0]) as wheel:
            binary.write_bytes(wheel.read(member))
        binary.chmod(0o755)
    import sysconfig

    pytriton_libs = Path(sysconfig.get_paths()["purelib"]) / "nvidia_pytriton.libs"
    lib.mkdir(parents=True, exist_ok=True)
    for soname, prefix in LIBS.items():
        link = lib / soname
        if not link.exists():
            matches = sorted(pytriton_libs.glob(f"{prefix}*"))
            if not matches:
                raise SystemExit(f"{prefix}* not in {pytriton_libs}: pip install nvidia-pytriton")
            link.unlink(missing_ok=True)
            link.symlink_to(matches[0])
    env = dict(os.environ, LD_LIBRARY_PATH=f"{lib}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    return binary, env


def measure(
    binary: Path,
    env: dict[str, str],
    model: str,
    url: str,
    protocol: str,
    level: int,
    out_csv: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One perf_analyzer run at one concurrency level (an unstable level does not end a sweep)."""
    command = [str(binary), "-m", model, "-u", url, "-i", protocol, "-b", "1"]
    command += ["--concurrency-range", f"{level}:{level}"]
    command += ["--measurement-interval", str(args.interval_ms)]
    command += ["--stability-percentage", str(args.stability), "--max-trials", "10"]
    command += ["-f", str(out_csv)]
    out_csv.unlink(missing_ok=True)
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    output = run.stdout + run.stderr
    out_csv.with_suffix(".log").write_text(output)
    rows = list(csv.DictReader(out_csv.read_text().splitlines())) if out_csv.is_file() else []
    if run.returncode != 0 or not rows:
        lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
        return {"concurrency": level, "error": lines[-1] if lines else f"exit {run.returncode}"}
    row = rows[0]
    return {
        "concurrency": level,
        "throughput": float(row["Inferences/Second"]),
        "p50_us": int(row["p50 latency"]),
        "p99_us": int(row["p99 latency"]),
    }


def sweep(
    binary: Path,
    env: dict[str, str],
    model: str,
    url: str,
    protocol: str,
    out_dir: Path,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    start, end, step = (int(part) for part in args.concurrency.split(":"))
    rows = []
    for level in range(start, end + 1, step):
        out_csv = out_dir / f"c{level}.csv"
        rows.append(measure(binary, env, model, url, protocol, level, out_csv, args))
    return rows


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    from converters.python_backend import write_python_backend
    from tests.helpers import start_gateway
    from tests.triton_server import TritonServer, assemble_triton

    repo = Path(args.repo).resolve()
    if not (repo / args.model / "config.pbtxt").is_file():
        raise SystemExit(f"{repo / args.model} not found: run `make models` first")
    binary, env = setup_perf_analyzer()
    work = Path(tempfile.mkdtemp(prefix="infergate-pa-"))
    write_python_backend(repo, work / "python", [args.model])
    triton = TritonServer(assemble_triton(), work / "python", work / "logs")
    started: list[Any] = []
    try:
        triton.start()
        started.append(triton)
        gateway_ort = start_gateway(repo)
        started.append(gateway_ort)
        gateway_triton = start_gateway(repo, "--backend", "triton", "--triton-url", triton.grpc_url)
        started.append(gateway_triton)
        targets = {
            "triton": (triton.http_url, triton.grpc_url),
            "gateway-ort": (gateway_ort.http_url, gateway_ort.grpc_url),
            "gateway-triton": (gateway_triton.http_url, gateway_triton.grpc_url),
        }
        out_dir = RESULTS / "perf_analyzer"
        out_dir.mkdir(parents=True, exist_ok=True)
        results: dict[str, Any] = {}
        for protocol in args.protocols:
            for target, (http_url, grpc_url) in targets.items():
                url = grpc_url if protocol == "grpc" else http_url
                print(f"perf_analyzer: {target} over {protocol} ...", flush=True)
                where = out_dir / f"{args.model}-{target}-{protocol}"
                where.mkdir(exist_ok=True)
                rows = sweep(binary, env, args.model, url, protocol, where, args)
                results[f"{target}/{protocol}"] = rows
    finally:
        for process in reversed(started):
            process.stop()
    return {
        "model": args.model,
        "concurrency_range": args.concurrency,
        "measurement_interval_ms": args.interval_ms,
        "stability_percentage": args.stability,
        "machine": {"cpus": os.cpu_count()},
        "results": results,
        "ratios": ratios(results),
    }


def ratios(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Throughput of each gateway setup over Triton direct, per protocol and concurrency."""
    out: dict[str, dict[str, float]] = {}
    for key, rows in results.items():
        target, protocol = key.split("/")
        base = results.get(f"triton/{protocol}", [])
        if target == "triton":
            continue
        direct = {row["concurrency"]: row["throughput"] for row in base if "throughput" in row}
        out[key] = {
            str(row["concurrency"]): round(row["throughput"] / direct[row["concurrency"]], 3)
            for row in rows
            if "throughput" in row and direct.get(row["concurrency"])
        }
    return out


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"perf_analyzer, model {report['model']}, batch 1 (infer/s, p50/p99 ms)")
    for column in ("target/protocol", "conc.", "infer/s", "p50", "p99", "vs triton"):
        table.add_column(column, justify="right")
    for key, rows in report["results"].items():
        for row in rows:
            if "error" in row:
                table.add_row(key, str(row["concurrency"]), "failed", row["error"][:60], "", "")
                continue
            ratio = report["ratios"].get(key, {}).get(str(row["concurrency"]))
            table.add_row(
                key,
                str(row["concurrency"]),
                f"{row['throughput']:.0f}",
                f"{row['p50_us'] / 1000:.2f}",
                f"{row['p99_us'] / 1000:.2f}",
                f"{ratio:.2f}x" if ratio is not None else "",
            )
    Console(width=110).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits_mlp")
    parser.add_argument("--repo", default=str(ROOT / "model_repo"))
    parser.add_argument("--concurrency", default="1:16:5", help="perf_analyzer start:end:step")
    parser.add_argument("--interval-ms", type=int, default=3000)
    parser.add_argument("--stability", type=int, default=25, help="--stability-percentage")
    parser.add_argument("--protocols", nargs="+", default=["http", "grpc"])
    parser.add_argument("--out", default=str(RESULTS / "perf_analyzer.json"))
    args = parser.parse_args()
    report = run_all(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
