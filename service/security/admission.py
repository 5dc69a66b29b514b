"""Admission: the security pieces one process shares, built once from settings.

Front ends authorize each call with :attr:`Admission.http` / :attr:`Admission.grpc` and set
:data:`service.security.policy.CURRENT`; the data plane calls :meth:`Admission.admit_infer` once it
knows the model and the rows of an inference, whatever front end it came through.
"""

from __future__ import annotations

from service.security.audit import AuditLog
from service.security.keys import KeyStore
from service.security.policy import CURRENT, Authorizer, parse_restricted
from service.security.ratelimit import RateLimiter
from service.settings import Settings


class Admission:
    def __init__(self, settings: Settings) -> None:
        self.audit = AuditLog(settings.audit_max_lines_per_s)
        path = settings.api_keys_file
        self.keys = KeyStore(path, settings.api_keys_reload_s) if path is not None else None
        http_restricted = parse_restricted(settings.http_restricted_api)
        grpc_restricted = parse_restricted(settings.grpc_restricted_protocol)
        self.http = Authorizer(settings, self.keys, http_restricted, self.audit)
        self.grpc = Authorizer(settings, self.keys, grpc_restricted, self.audit)
        self.limiter = RateLimiter(settings)

    @property
    def checks_infer(self) -> bool:
        """Anything to check per inference: keys (allow-lists, limits of their own) or limits
        without keys; an open gateway then pays no admission call per request."""
        anonymous = self.http.anonymous
        return self.keys is not None or bool(anonymous.requests_per_s or anonymous.rows_per_s)

    async def close(self) -> None:
        await self.limiter.close()

    async def admit_infer(self, model: str, rows: int) -> None:
        """Model allow-list and the caller's rate limits for one inference of ``rows`` rows."""
        principal = CURRENT.get() or self.http.anonymous
        self.http.check_model(principal, model)
        await self.limiter.check(principal, rows)
