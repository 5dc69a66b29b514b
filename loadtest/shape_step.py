"""The step-load shape, defined only when ``--step-users`` (or ``LOCUST_STEP_USERS``) is given.

Locust applies any shape class found in its locustfiles to every run, so defining it
unconditionally would turn ``locust -f loadtest/ -u 20 -t 10s`` into a step run.
Locust imports locustfiles before it parses options, hence the look at argv and env here.
"""

from __future__ import annotations

import os
import sys


def step_load_requested(argv: list[str], environ: dict[str, str] | os._Environ[str]) -> bool:
    flag = any(arg == "--step-users" or arg.startswith("--step-users=") for arg in argv)
    return flag or bool(environ.get("LOCUST_STEP_USERS"))


if step_load_requested(sys.argv, os.environ):
    from loadtest._step import StepLoadShape

    __all__ = ["StepLoadShape"]
