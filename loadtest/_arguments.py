"""Custom Locust options (command line, ``LOCUST_*`` env, web UI), registered once.

Imported by every locustfile through the package, so the listener is added exactly once.
"""

from __future__ import annotations

from typing import Any

from locust import events

from loadtest._options import PROTOCOLS

# (flag, type, default, help, extra argparse keywords): options also shown in the web UI
_WEB_OPTIONS: list[tuple[str, type, object, str, dict[str, Any]]] = [
    ("--model", str, "", "Model(s) to load, comma-separated; empty = every READY model", {}),
    ("--rows", int, 1, "Rows (batch size) per request", {}),
    ("--seq-len", int, 16, "Size used for dynamic non-batch dims", {}),
    ("--hit-ratio", float, 0.5, "CacheMixUser: share of repeated inputs", {}),
    ("--pool-size", int, 32, "CacheMixUser: number of repeated inputs", {}),
    ("--protocol", str, "json", "Wire format of CacheMixUser and EmbeddingUser",
     {"choices": PROTOCOLS}),
    ("--grpc-host", str, "", "HOST:PORT of the gRPC endpoint; default --host's :8001", {}),
    ("--embed-model", str, "minilm_embed", "EmbeddingUser's model", {}),
    ("--min-tokens", int, 8, "EmbeddingUser: shortest text", {}),
    ("--max-tokens", int, 64, "EmbeddingUser: longest text", {}),
    ("--model-repo", str, "", "Local model repository for reference checks", {}),
    ("--check-fraction", float, 0.05,
     "Share of responses compared with a local ONNX Runtime run (needs --model-repo)", {}),
    ("--tolerance", float, 1e-3, "atol and rtol of reference checks", {}),
    ("--think-time-ms", float, 0.0, "Pause between a user's requests", {}),
]  # fmt: skip
_STEP_OPTIONS: list[tuple[str, type, object, str]] = [
    ("--step-users", str, "",
     "Step shape: user counts, e.g. 1,8,32 (the shape is only loaded when this is given)"),
    ("--step-duration", float, 30.0, "Seconds per step"),
    ("--step-spawn-rate", float, 0.0, "Users/s within a step; 0 = at once"),
    ("--step-report", str, "", "Write per-step statistics to this JSON"),
]  # fmt: skip


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    for flag, kind, default, help_text, extra in _WEB_OPTIONS:
        parser.add_argument(
            flag, type=kind, default=default, help=help_text, include_in_web_ui=True, **extra
        )
    for flag, kind, default, help_text in _STEP_OPTIONS:
        parser.add_argument(flag, type=kind, default=default, help=help_text)


@events.init.add_listener
def _refresh_clock(**_: Any) -> None:
    """Refresh gevent's cached loop time after the slow imports of the locustfiles.

    libev caches "now" per loop iteration; without this, ``-t 4s`` is timed from the last
    iteration before those imports and can end the run before any request is made.
    """
    import gevent

    gevent.get_hub().loop.update_now()
