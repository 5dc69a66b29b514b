"""PNG plots of a capacity run: throughput and p50/p95/p99 over time and against users."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadtest._report import CapacityReport

_PERCENTILES = (("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99"))


def _series(points: list[dict[str, Any]], key: str) -> list[float]:
    return [float("nan") if p.get(key) is None else float(p[key]) for p in points]


def _timeline_axes(report: CapacityReport, throughput: Any, latency: Any) -> None:
    points = report.timeline
    t = [p["t"] for p in points]
    throughput.plot(t, _series(points, "throughput"), color="tab:blue", label="req/s")
    throughput.set_xlabel("time (s)")
    throughput.set_ylabel("requests/s")
    throughput.set_title("Throughput over time")
    throughput.set_ylim(bottom=0)
    users = throughput.twinx()
    users.step(t, [p["users"] for p in points], where="post", color="tab:gray", alpha=0.6)
    users.set_ylabel("users", color="tab:gray")
    for key, label in _PERCENTILES:
        latency.plot(t, _series(points, key), label=label)
    latency.axhline(report.slo_p99_ms, color="tab:red", linestyle="--", label="SLO p99")
    latency.set_xlabel("time (s)")
    latency.set_ylabel("latency (ms)")
    latency.set_title("Latency over time (per second)")
    latency.legend(loc="upper left", fontsize="small")


def _capacity_axes(report: CapacityReport, throughput: Any, latency: Any) -> None:
    steps = report.steps
    users = [s["users"] for s in steps]
    colors = ["tab:green" if s["meets_slo"] else "tab:red" for s in steps]
    throughput.plot(users, _series(steps, "throughput"), color="tab:blue", zorder=1)
    throughput.scatter(users, _series(steps, "throughput"), c=colors, zorder=2)
    best = report.capacity
    if best is not None:
        throughput.annotate(
            f"capacity {best['throughput']:.0f} req/s",
            (best["users"], best["throughput"]),
            textcoords="offset points",
            xytext=(0, 8),
            ha="center",
            fontsize="small",
        )
    throughput.set_xlabel("users")
    throughput.set_ylabel("requests/s")
    throughput.set_title("Throughput vs users (green: within SLO)")
    peak = max((s["throughput"] for s in steps), default=0.0)
    throughput.set_ylim(0, peak * 1.2 or 1.0)
    for key, label in _PERCENTILES:
        latency.plot(users, _series(steps, key), marker="o", label=label)
    latency.axhline(report.slo_p99_ms, color="tab:red", linestyle="--", label="SLO p99")
    latency.set_xlabel("users")
    latency.set_ylabel("latency (ms)")
    latency.set_title("Latency vs users")
    latency.legend(loc="upper left", fontsize="small")
    for axes in (throughput, latency):
        if len(users) > 2 and max(users) / max(min(users), 1) >= 16:
            axes.set_xscale("log", base=2)
        axes.set_xticks(users, [str(u) for u in users])
        axes.minorticks_off()


def write_plots(
    report: CapacityReport, out: Path, suffix: str = "", dpi: int = 80
) -> dict[str, Path]:
    """``timeline<suffix>.png``, ``capacity<suffix>.png`` and a 2x2 ``summary<suffix>.png``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, draw, shape, size in (
        ("timeline", [_timeline_axes], (1, 2), (11, 3.8)),
        ("capacity", [_capacity_axes], (1, 2), (11, 3.8)),
        ("summary", [_timeline_axes, _capacity_axes], (2, 2), (11, 7.2)),
    ):
        figure, axes = plt.subplots(*shape, figsize=size, squeeze=False)
        for row, function in enumerate(draw):
            function(report, axes[row][0], axes[row][1])
        figure.suptitle(f"{report.models or 'all models'} at {report.host}", fontsize="medium")
        figure.tight_layout()
        paths[name] = out / f"{name}{suffix}.png"
        figure.savefig(paths[name], dpi=dpi)
        plt.close(figure)
    return paths
