"""Custom Locust options (command line, ``LOCUST_*`` env, web UI), registered once.

Imported by every locustfile through the package, so the listener is added exactly once.
"""

from __future__ import annotations

from typing import Any

from locust import events

from loadtest._options import PROTOCOLS


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    web: dict[str, Any] = {"include_in_web_ui": True}
    parser.add_argument(
        "--model",
        default="",
        help="Model(s) to load, comma-separated; empty = every READY model",
        **web,
    )
    parser.add_argument("--rows", type=int, default=1, help="Rows (batch size) per request", **web)
    parser.add_argument(
        "--seq-len", type=int, default=16, help="Size used for dynamic non-batch dims", **web
    )
    parser.add_argument(
        "--hit-ratio", type=float, default=0.5, help="CacheMixUser: share of repeated inputs", **web
    )
    parser.add_argument(
        "--pool-size", type=int, default=32, help="CacheMixUser: number of repeated inputs", **web
    )
    parser.add_argument(
        "--protocol",
        default="json",
        choices=PROTOCOLS,
        help="Wire format of CacheMixUser and EmbeddingUser",
        **web,
    )
    parser.add_argument(
        "--grpc-host",
        default="",
        help="HOST:PORT of the gRPC endpoint; default --host's :8001",
        **web,
    )
    parser.add_argument(
        "--embed-model", default="minilm_embed", help="EmbeddingUser's model", **web
    )
    parser.add_argument(
        "--min-tokens", type=int, default=8, help="EmbeddingUser: shortest text", **web
    )
    parser.add_argument(
        "--max-tokens", type=int, default=64, help="EmbeddingUser: longest text", **web
    )
    parser.add_argument(
        "--model-repo", default="", help="Local model repository for reference checks", **web
    )
    parser.add_argument(
        "--check-fraction",
        type=float,
        default=0.05,
        help="Share of responses compared with a local ONNX Runtime run (needs --model-repo)",
        **web,
    )
    parser.add_argument(
        "--tolerance", type=float, default=1e-3, help="atol and rtol of reference checks", **web
    )
    parser.add_argument(
        "--think-time-ms", type=float, default=0.0, help="Pause between a user's requests", **web
    )
    parser.add_argument(
        "--step-users",
        default="",
        help="Step shape: user counts, e.g. 1,8,32 (the shape is only loaded when this is given)",
    )
    parser.add_argument("--step-duration", type=float, default=30.0, help="Seconds per step")
    parser.add_argument(
        "--step-spawn-rate", type=float, default=0.0, help="Users/s within a step; 0 = at once"
    )
    parser.add_argument("--step-report", default="", help="Write per-step statistics to this JSON")


@events.init.add_listener
def _refresh_clock(**_: Any) -> None:
    """Refresh gevent's cached loop time after the slow imports of the locustfiles.

    libev caches "now" per loop iteration; without this, ``-t 4s`` is timed from the last
    iteration before those imports and can end the run before any request is made.
    """
    import gevent

    gevent.get_hub().loop.update_now()
