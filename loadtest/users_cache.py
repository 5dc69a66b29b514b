"""Cache-mix user: ``--hit-ratio`` of requests repeat one of ``--pool-size`` fixed inputs.

The pool is shared by every user of the process, so repeats are real cache hits for a server
that caches (infergate with Redis, Triton's response cache); ``[repeat]`` and ``[fresh]``
requests are reported separately so their latencies can be compared.
"""

from __future__ import annotations

from locust import FastHttpUser, tag, task

from loadtest._base import InferenceMixin
from loadtest._inputs import InputPool

_pools: dict[tuple[str, int, int, int], InputPool] = {}


class CacheMixUser(InferenceMixin, FastHttpUser):
    """Repeated vs fresh inputs over ``--protocol`` (json, binary or grpc)."""

    def on_start(self) -> None:
        self.setup_inference(self.client)

    def pool(self) -> InputPool:
        spec, options = self.pick_spec(), self.options
        key = (spec.name, options.rows, options.seq_len, options.pool_size)
        if key not in _pools:
            _pools[key] = InputPool(spec, options.rows, options.seq_len, options.pool_size)
        return _pools[key]

    @tag("cache")
    @task
    def infer_mixed(self) -> None:
        pool = self.pool()
        inputs, repeated = pool.draw(self.options.hit_ratio, self.rng)
        self.infer(pool.spec, inputs, "[repeat]" if repeated else "[fresh]")
