"""The capacity report: per-step throughput and latency, and the best step within the SLO."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class CapacityReport:
    host: str
    models: str
    user_classes: list[str]
    rows: int
    slo_p99_ms: float
    max_failure_ratio: float
    steps: list[dict[str, Any]]
    timeline: list[dict[str, Any]] = field(default_factory=list)
    locust: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for step in self.steps:
            step["meets_slo"] = self.meets_slo(step)
            step["rows_per_s"] = round(step["throughput"] * self.rows, 3)

    def meets_slo(self, step: dict[str, Any]) -> bool:
        """Measured with all its users running, p99 within the SLO, failures within bounds."""
        requests, p99 = step["requests"], step["p99_ms"]
        if not requests or p99 is None or not step.get("ramp_complete", True):
            return False
        return p99 <= self.slo_p99_ms and step["failures"] / requests <= self.max_failure_ratio

    @property
    def capacity(self) -> dict[str, Any] | None:
        """The passing step with the highest throughput, or None if none passes."""
        passing = [step for step in self.steps if step["meets_slo"]]
        return max(passing, key=lambda step: step["throughput"]) if passing else None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "capacity": self.capacity}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CapacityReport:
        fields = cls.__dataclass_fields__
        return cls(**{key: value for key, value in data.items() if key in fields})


def format_ms(value: float | None) -> str:
    """A latency in ms at a precision that fits its size: ``0.42``, ``7.15``, ``49.3``, ``1250``."""
    if value is None:
        return "–"
    decimals = 0 if value >= 100 else 1 if value >= 10 else 2
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def render_markdown(report: CapacityReport) -> str:
    best = report.capacity
    lines = [
        f"# Capacity report: {report.models or 'all models'} at {report.host}",
        "",
        f"Users: {', '.join(report.user_classes) or 'all'}; rows per request: {report.rows}; "
        f"SLO: p99 ≤ {report.slo_p99_ms:g} ms and failures ≤ {report.max_failure_ratio:.2%}.",
        "",
    ]
    if best is None:
        lines.append("**Capacity: no step met the SLO.**")
    else:
        lines.append(
            f"**Capacity: {best['throughput']:.1f} req/s ({best['rows_per_s']:.1f} rows/s) "
            f"at {best['users']} users, p99 {format_ms(best['p99_ms'])} ms.**"
        )
    lines += [
        "",
        "| users | seconds | requests | failures | req/s | rows/s "
        "| p50 ms | p95 ms | p99 ms | SLO |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for step in report.steps:
        verdict = "✅" if step["meets_slo"] else "❌"
        if not step.get("ramp_complete", True):
            verdict += " (ramp)"
        lines.append(
            f"| {step['users']} | {step['seconds']:.1f} | {step['requests']} | {step['failures']} "
            f"| {step['throughput']:.1f} | {step['rows_per_s']:.1f} | {format_ms(step['p50_ms'])} "
            f"| {format_ms(step['p95_ms'])} | {format_ms(step['p99_ms'])} | {verdict} |"
        )
    lines.append("")
    return "\n".join(lines)


def write_report(report: CapacityReport, out: Path, stem: str = "report") -> dict[str, Path]:
    """``<stem>.md`` and ``<stem>.json`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / f"{stem}.md", "json": out / f"{stem}.json"}
    paths["markdown"].write_text(render_markdown(report))
    paths["json"].write_text(json.dumps(report.to_json(), indent=2))
    return paths
