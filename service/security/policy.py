"""Who may call what: API keys with scopes, model allow-lists and Triton's restricted APIs.

Every REST route and gRPC method belongs to one of Triton's API groups (``health``,
``metadata``, ``inference``, ...; plus ``metrics``). A group needs a scope (``infer``, ``read``,
``admin``) unless it is open; Triton's ``--http-restricted-api GROUPS:HEADER=VALUE`` additionally
demands a header on the groups it names. Each front end classifies its own calls into a
:class:`Route` (its route table lives with it), passes it with the request's headers to
:meth:`Authorizer.authorize`, and renders the ``Unauthenticated`` / ``PermissionDenied`` it raises.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass

from prometheus_client import Counter

from service.errors import PermissionDenied, Unauthenticated
from service.security.audit import AuditLog
from service.security.keys import KeyStore
from service.settings import Settings

API_GROUPS = (
    "health",
    "metadata",
    "inference",
    "shared-memory",
    "model-config",
    "model-repository",
    "statistics",
    "trace",
    "logging",
    "metrics",
)
#: the scope each group needs (model-repository's index needs only ``read``: see the routes)
GROUP_SCOPE = {
    "health": "read",
    "metadata": "read",
    "model-config": "read",
    "statistics": "read",
    "metrics": "read",
    "inference": "infer",
    "model-repository": "admin",
    "shared-memory": "admin",
    "trace": "admin",
    "logging": "admin",
}

AUTH_FAILURES = Counter(
    "infergate_auth_failures_total", "Requests refused by authentication or scope", ("reason",)
)


@dataclass(frozen=True, slots=True)
class Route:
    """One call as authorization sees it."""

    group: str
    action: str  # e.g. "infer", "load", "config"
    scope: str
    model: str = ""


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller a request was admitted as; ``anonymous`` when keys are off."""

    key_id: str
    scopes: frozenset[str]
    models: frozenset[str] = frozenset()  # empty = every model
    requests_per_s: float = 0.0
    rows_per_s: float = 0.0

    @property
    def label(self) -> str:
        """A short hash of the key id for metric labels (never the key)."""
        return hashlib.sha256(self.key_id.encode()).hexdigest()[:8]

    def may_use(self, model: str) -> bool:
        return not self.models or model in self.models


#: the principal of the request being served (set by the front end, read by the data plane)
CURRENT: ContextVar[Principal | None] = ContextVar("infergate_principal", default=None)


def parse_restricted(entries: list[str]) -> dict[str, tuple[str, str]]:
    """Triton's ``GROUP[,GROUP...]:HEADER=VALUE`` (repeatable) -> {group: (header, value)}.

    The list may arrive split at commas (``["model-repository", "metadata:h=v"]``): groups
    without a ``:`` belong to the next entry that has one.
    """
    restricted: dict[str, tuple[str, str]] = {}
    groups: list[str] = []
    for entry in entries:
        head, colon, spec = entry.partition(":")
        groups += [group.strip() for group in head.split(",") if group.strip()]
        if not colon:
            continue
        header, equals, value = spec.partition("=")
        if not equals or not header.strip():
            raise ValueError(f"restricted API '{entry}' needs GROUPS:HEADER=VALUE")
        for group in groups:
            if group not in API_GROUPS:
                raise ValueError(f"unknown API group '{group}' (one of {', '.join(API_GROUPS)})")
            restricted[group] = (header.strip().lower(), value)
        groups = []
    if groups:
        raise ValueError(f"restricted API groups {groups} lack ':HEADER=VALUE'")
    return restricted


def credential(headers: Mapping[str, str]) -> str | None:
    """The key a request carries: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""
    value = headers.get("authorization")
    if value:
        scheme, _, token = value.strip().partition(" ")
        return token.strip() if scheme.lower() == "bearer" else value.strip()
    return headers.get("x-api-key") or None


class Authorizer:
    """Keys (optional), open groups and restricted groups for one protocol."""

    def __init__(
        self,
        settings: Settings,
        keys: KeyStore | None,
        restricted: dict[str, tuple[str, str]],
        audit: AuditLog,
    ) -> None:
        self.keys = keys
        self.open_groups = frozenset(settings.auth_open_apis)
        self.restricted = restricted
        self.audit = audit
        self.anonymous = Principal(
            "anonymous",
            frozenset(("infer", "read", "admin")),
            requests_per_s=settings.anonymous_requests_per_s,
            rows_per_s=settings.anonymous_rows_per_s,
        )

    @property
    def active(self) -> bool:
        """Does any call need checking at all? (Lets front ends skip the work when not.)"""
        return self.keys is not None or bool(self.restricted)

    def authorize(self, route: Route, headers: Mapping[str, str], client: str) -> Principal:
        """The caller's principal, or Unauthenticated / PermissionDenied (audited)."""
        needed = self.restricted.get(route.group)
        if needed is not None and headers.get(needed[0]) != needed[1]:
            self._refuse(route, client, "restricted", "")
            raise PermissionDenied(f"This API is restricted, expecting header '{needed[0]}'")
        if self.keys is None or route.group in self.open_groups:
            principal = self.anonymous
        else:
            principal = self._principal(route, headers, client)
        if route.scope == "admin" and route.group == "model-repository":
            self.audit.record(
                "admin", key=principal.key_id, action=route.action, model=route.model, client=client
            )
        return principal

    def _principal(self, route: Route, headers: Mapping[str, str], client: str) -> Principal:
        assert self.keys is not None
        key = credential(headers)
        if not key:
            self._refuse(route, client, "missing", "")
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        record = self.keys.find(key)
        if record is None:
            self._refuse(route, client, "invalid", "")
            raise Unauthenticated("invalid API key")
        principal = Principal(
            record.id,
            frozenset(record.scopes),
            frozenset(record.models),
            record.requests_per_s,
            record.rows_per_s,
        )
        if route.scope not in principal.scopes:
            self._refuse(route, client, "scope", record.id)
            raise PermissionDenied(f"key '{record.id}' lacks the '{route.scope}' scope")
        if route.model and not principal.may_use(route.model):
            self._refuse(route, client, "model", record.id)
            raise PermissionDenied(f"key '{record.id}' may not use model '{route.model}'")
        return principal

    def check_model(self, principal: Principal, model: str) -> None:
        """The allow-list check for calls whose model is only known from the body."""
        if not principal.may_use(model):
            self._refuse(Route("inference", "infer", "infer", model), "", "model", principal.key_id)
            raise PermissionDenied(f"key '{principal.key_id}' may not use model '{model}'")

    def _refuse(self, route: Route, client: str, reason: str, key_id: str) -> None:
        AUTH_FAILURES.labels(reason).inc()
        self.audit.record(
            "auth-failure",
            reason=reason,
            key=key_id,
            action=route.action,
            model=route.model,
            client=client,
        )
