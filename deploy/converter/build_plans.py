"""Build TensorRT plans for every ONNX model of a Triton repository (the compose `converter`).

Runs inside NVIDIA's TensorRT container (Python 3.10 there, so it cannot ``pip install`` infergate,
which needs 3.11): stdlib + ``tritonclient``'s ``model_config_pb2`` + ``trtexec``. For each model
whose ``config.pbtxt`` uses ONNX Runtime it writes ``<model>_trt/<version>/model.plan`` with an
optimisation profile spanning the model's batch sizes, and a ``tensorrt_plan`` config that keeps
the original's batching, cache and tensor names, so Triton serves both side by side.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

ONNX_PLATFORMS = {"onnxruntime_onnx"}
ONNX_BACKENDS = {"onnxruntime"}
UNSUPPORTED_TYPES = {mc.TYPE_STRING}
TRT_SUFFIX = "_trt"


@dataclass(frozen=True)
class DimRange:
    """min/opt/max used for a variable (-1) non-batch axis, e.g. a sequence length."""

    min: int
    opt: int
    max: int

    @classmethod
    def parse(cls, text: str) -> DimRange:
        low, opt, high = (int(part) for part in text.split(":"))
        if not 1 <= low <= opt <= high:
            raise argparse.ArgumentTypeError(f"need 1 <= MIN <= OPT <= MAX, got {text}")
        return cls(low, opt, high)


@dataclass(frozen=True)
class PlanJob:
    """One trtexec invocation and the config the resulting plan is served with."""

    model: str
    version: str
    onnx_path: Path
    plan_path: Path
    argv: list[str]
    config: mc.ModelConfig


DEFAULT_DIMS = DimRange(1, 128, 512)


def read_config(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def is_onnx_model(config: mc.ModelConfig) -> bool:
    return config.platform in ONNX_PLATFORMS or config.backend in ONNX_BACKENDS


def _quote(name: str) -> str:
    """trtexec splits shape specs on ':' and ','; names holding them must be single-quoted."""
    return f"'{name}'" if (":" in name or "," in name) else name


def shape_specs(
    config: mc.ModelConfig, dim_range: DimRange, opt_batch: int | None
) -> tuple[str, str, str]:
    """``--minShapes/--optShapes/--maxShapes`` values covering the config's batch and dims."""
    batched = config.max_batch_size > 0
    max_batch = max(config.max_batch_size, 1)
    opt = opt_batch if opt_batch is not None else max(1, max_batch // 2)
    opt = min(max(opt, 1), max_batch)
    mins, opts, maxs = [], [], []
    for tensor in config.input:
        dims = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
        lo, mid, hi = ([1], [opt], [max_batch]) if batched else ([], [], [])
        for dim in dims:
            if dim < 0:
                lo.append(dim_range.min)
                mid.append(dim_range.opt)
                hi.append(dim_range.max)
            else:
                lo.append(dim)
                mid.append(dim)
                hi.append(dim)
        name = _quote(tensor.name)
        mins.append(f"{name}:{'x'.join(map(str, lo))}")
        opts.append(f"{name}:{'x'.join(map(str, mid))}")
        maxs.append(f"{name}:{'x'.join(map(str, hi))}")
    return ",".join(mins), ",".join(opts), ",".join(maxs)


def plan_config(config: mc.ModelConfig, gpus: int) -> mc.ModelConfig:
    """The ONNX config re-targeted at a TensorRT plan on the GPU; batching and cache kept."""
    out = mc.ModelConfig()
    out.CopyFrom(config)
    out.name = config.name + TRT_SUFFIX
    out.platform = "tensorrt_plan"
    out.backend = ""
    out.default_model_filename = "model.plan"
    out.optimization.ClearField("execution_accelerators")
    del out.instance_group[:]
    out.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=max(gpus, 1))
    return out


def plan_jobs(
    repo: Path,
    out_repo: Path,
    *,
    trtexec: str = "trtexec",
    fp16: bool = False,
    dim_range: DimRange = DEFAULT_DIMS,
    opt_batch: int | None = None,
    workspace_mib: int = 4096,
    gpus: int = 1,
) -> tuple[list[PlanJob], list[str]]:
    """Every plan to build, plus a reason for each ONNX model that TensorRT cannot take."""
    jobs: list[PlanJob] = []
    skipped: list[str] = []
    for config_path in sorted(repo.glob("*/config.pbtxt")):
        model_dir = config_path.parent
        if model_dir.name.endswith(TRT_SUFFIX):
            continue
        config = read_config(config_path)
        if not config.name:
            config.name = model_dir.name
        if not is_onnx_model(config):
            continue
        bad = [t.name for t in config.input if t.data_type in UNSUPPORTED_TYPES]
        if bad:
            skipped.append(f"{config.name}: TensorRT has no string tensors ({', '.join(bad)})")
            continue
        filename = config.default_model_filename or "model.onnx"
        min_s, opt_s, max_s = shape_specs(config, dim_range, opt_batch)
        target = plan_config(config, gpus)
        for version_dir in sorted(p for p in model_dir.iterdir() if p.name.isdigit()):
            onnx_path = version_dir / filename
            if not onnx_path.is_file():
                continue
            plan_path = out_repo / target.name / version_dir.name / "model.plan"
            argv = [
                trtexec,
                f"--onnx={onnx_path}",
                f"--saveEngine={plan_path}",
                f"--minShapes={min_s}",
                f"--optShapes={opt_s}",
                f"--maxShapes={max_s}",
                f"--memPoolSize=workspace:{workspace_mib}M",
                "--skipInference",
            ]
            if fp16:
                argv.append("--fp16")
            jobs.append(PlanJob(config.name, version_dir.name, onnx_path, plan_path, argv, target))
    return jobs, skipped


def gpu_retargets(repo: Path, gpu_ids: list[int]) -> list[tuple[Path, mc.ModelConfig]]:
    """ONNX configs whose instance groups are not all KIND_GPU, re-targeted at the GPU.

    The converters write KIND_CPU by default; on a GPU host Triton would then run the ONNX
    models on the CPU. Counts are kept; ``gpu_ids`` (empty = all GPUs) become ``gpus``.
    """
    changed = []
    for config_path in sorted(repo.glob("*/config.pbtxt")):
        if config_path.parent.name.endswith(TRT_SUFFIX):
            continue
        config = read_config(config_path)
        if not is_onnx_model(config):
            continue
        groups = list(config.instance_group) or [mc.ModelInstanceGroup(count=1)]
        target = mc.ModelConfig()
        target.CopyFrom(config)
        del target.instance_group[:]
        for group in groups:
            moved = target.instance_group.add()
            moved.CopyFrom(group)
            moved.kind = mc.ModelInstanceGroup.KIND_GPU
            if gpu_ids:
                del moved.gpus[:]
                moved.gpus.extend(gpu_ids)
        if target != config:
            changed.append((config_path, target))
    return changed


def write_config(out_repo: Path, config: mc.ModelConfig) -> Path:
    path = out_repo / config.name / "config.pbtxt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text_format.MessageToString(config))
    return path


def _find_trtexec(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in ("/usr/src/tensorrt/bin/trtexec", "/opt/tensorrt/bin/trtexec"):
        if Path(candidate).is_file():
            return candidate
    raise SystemExit(f"trtexec not found (looked for {name!r} on PATH and in /usr/src/tensorrt)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path, help="Triton model repository holding ONNX models")
    parser.add_argument("--out", type=Path, default=None, help="output repository (default: repo)")
    parser.add_argument("--fp16", action="store_true", help="allow FP16 kernels")
    parser.add_argument(
        "--dim-range",
        type=DimRange.parse,
        default=DEFAULT_DIMS,
        help="MIN:OPT:MAX for variable non-batch axes such as sequence length",
    )
    parser.add_argument("--opt-batch", type=int, default=None)
    parser.add_argument("--workspace-mib", type=int, default=4096)
    parser.add_argument("--gpus", type=int, default=1, help="instance_group count per plan")
    parser.add_argument(
        "--device",
        choices=("keep", "gpu"),
        default="keep",
        help="gpu: also re-target the ONNX models' configs at KIND_GPU (what Triton runs them on)",
    )
    parser.add_argument(
        "--gpu-ids", default="", help="with --device gpu: comma list of GPU ids (default: all)"
    )
    parser.add_argument("--trtexec", default="trtexec")
    parser.add_argument("--force", action="store_true", help="rebuild plans newer than the ONNX")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)

    out_repo = args.out or args.repo
    trtexec = args.trtexec if args.dry_run else _find_trtexec(args.trtexec)
    jobs, skipped = plan_jobs(
        args.repo,
        out_repo,
        trtexec=trtexec,
        fp16=args.fp16,
        dim_range=args.dim_range,
        opt_batch=args.opt_batch,
        workspace_mib=args.workspace_mib,
        gpus=args.gpus,
    )
    for reason in skipped:
        print(f"skip {reason}", file=sys.stderr)
    if args.device == "gpu":
        gpu_ids = [int(part) for part in args.gpu_ids.split(",") if part.strip()]
        for config_path, target in gpu_retargets(args.repo, gpu_ids):
            print(f"KIND_GPU: {config_path}", flush=True)
            if not args.dry_run:
                config_path.write_text(text_format.MessageToString(target))
    failures = 0
    for job in jobs:
        print(" ".join(job.argv), flush=True)
        if args.dry_run:
            continue
        fresh = job.plan_path.is_file() and (
            job.plan_path.stat().st_mtime >= job.onnx_path.stat().st_mtime
        )
        if fresh and not args.force:
            print(f"up to date: {job.plan_path}")
            write_config(out_repo, job.config)
            continue
        job.plan_path.parent.mkdir(parents=True, exist_ok=True)
        if subprocess.run(job.argv, check=False).returncode != 0:
            print(f"FAILED {job.model} v{job.version}", file=sys.stderr)
            failures += 1
            continue
        write_config(out_repo, job.config)
    if not jobs:
        print(f"no ONNX models under {args.repo}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
