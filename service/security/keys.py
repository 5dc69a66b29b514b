"""API keys: the key file (hashes only), key creation and revocation, lookup and reload.

A key reads ``igk_<lookup>_<secret>``: ``lookup`` is 8 random hex characters that name the
record (a dict lookup, O(1), whatever the number of keys) and ``secret`` is 32 random bytes,
base64url. The file stores ``sha256(salt || secret)`` with a per-key random salt. A slow password
hash (bcrypt, argon2) exists to stretch guessable passwords; a 256-bit random secret cannot be
guessed, so one SHA-256 is enough and keeps authentication at microseconds per request. The salt
makes equal secrets hash differently and the comparison is constant-time. Plain keys are printed
once by ``infergate keys create`` and never stored, kept in memory or logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger("infergate.auth")

SCOPES = ("infer", "read", "admin")
KEY_PREFIX = "igk"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One key as the file holds it: who it is, what it may do, and the hash of its secret."""

    id: str
    lookup: str
    salt: str  # hex
    hash: str  # hex sha256(salt || secret)
    scopes: tuple[str, ...]
    models: tuple[str, ...] = ()  # empty = every model
    requests_per_s: float = 0.0  # 0 = no limit of its own
    rows_per_s: float = 0.0
    created: float = field(default=0.0)

    def matches(self, secret: str) -> bool:
        digest = _digest(bytes.fromhex(self.salt), secret)
        return hmac.compare_digest(digest, self.hash)

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["scopes"] = list(self.scopes)
        data["models"] = list(self.models)
        return data

    @classmethod
    def from_json(cls, data: dict[str, object]) -> KeyRecord:
        scopes = tuple(str(s) for s in data.get("scopes", ()))  # type: ignore[attr-defined]
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown:
            raise ValueError(f"key '{data.get('id')}': unknown scopes {unknown}")
        return cls(
            id=str(data["id"]),
            lookup=str(data["lookup"]),
            salt=str(data["salt"]),
            hash=str(data["hash"]),
            scopes=scopes,
            models=tuple(str(m) for m in data.get("models", ())),  # type: ignore[attr-defined]
            requests_per_s=float(data.get("requests_per_s", 0.0)),  # type: ignore[arg-type]
            rows_per_s=float(data.get("rows_per_s", 0.0)),  # type: ignore[arg-type]
            created=float(data.get("created", 0.0)),  # type: ignore[arg-type]
        )


def _digest(salt: bytes, secret: str) -> str:
    return hashlib.sha256(salt + secret.encode()).hexdigest()


def split_key(key: str) -> tuple[str, str] | None:
    """``igk_<lookup>_<secret>`` -> (lookup, secret); None when it is not shaped like a key."""
    prefix, _, rest = key.partition("_")
    lookup, _, secret = rest.partition("_")
    if prefix != KEY_PREFIX or len(lookup) != 8 or not secret:
        return None
    return lookup, secret


def read_records(path: Path) -> list[KeyRecord]:
    """The records of a key file; a missing file holds none."""
    if not path.exists():
        return []
    data = json.loads(path.read_text() or "{}")
    return [KeyRecord.from_json(item) for item in data.get("keys", [])]


def write_records(path: Path, records: list[KeyRecord]) -> None:
    """Replace the file atomically (a reader never sees half a file), readable by owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = json.dumps({"keys": [r.to_json() for r in records]}, indent=2) + "\n"
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as out:
        out.write(body)
    os.chmod(temp, 0o600)
    os.replace(temp, path)


def create_key(
    path: Path,
    key_id: str,
    scopes: list[str],
    models: list[str] | None = None,
    requests_per_s: float = 0.0,
    rows_per_s: float = 0.0,
) -> str:
    """Add a key to the file and return the plain key (the only time it exists)."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ValueError(f"scopes must be some of {', '.join(SCOPES)} (got {scopes})")
    records = read_records(path)
    if any(record.id == key_id for record in records):
        raise ValueError(f"a key with id '{key_id}' exists; revoke it first")
    taken = {record.lookup for record in records}
    lookup = secrets.token_hex(4)
    while lookup in taken:
        lookup = secrets.token_hex(4)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    record = KeyRecord(
        key_id,
        lookup,
        salt.hex(),
        _digest(salt, secret),
        tuple(scopes),
        tuple(models or ()),
        requests_per_s,
        rows_per_s,
        round(time.time(), 3),
    )
    write_records(path, [*records, record])
    return f"{KEY_PREFIX}_{lookup}_{secret}"


def revoke_key(path: Path, key_id: str) -> bool:
    """Remove the key named ``key_id``; False when there is none."""
    records = read_records(path)
    kept = [record for record in records if record.id != key_id]
    if len(kept) == len(records):
        return False
    write_records(path, kept)
    return True


class KeyStore:
    """The key file in memory, by lookup id; re-read when its mtime or size changes.

    ``refresh`` costs one ``stat`` and runs at most once per ``check_interval_s`` (injectable
    clock), so a rewritten file (or a rotated Kubernetes secret) takes effect without a restart.
    A file that fails to parse keeps the previous keys and logs why.
    """

    def __init__(
        self,
        path: Path,
        check_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.check_interval_s = check_interval_s
        self._clock = clock
        self._by_lookup: dict[str, KeyRecord] = {}
        self._signature: tuple[int, int] | None = None
        self._checked = float("-inf")
        self.reloads = 0
        self.refresh(force=True)

    def __len__(self) -> int:
        return len(self._by_lookup)

    def refresh(self, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._checked < self.check_interval_s:
            return
        self._checked = now
        try:
            stat = self.path.stat()
            signature = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            signature = (0, 0)
        if signature == self._signature:
            return
        try:
            records = read_records(self.path)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("key file %s not loaded (keeping %d keys): %s", self.path, len(self), exc)
            return
        self._by_lookup = {record.lookup: record for record in records}
        self._signature = signature
        self.reloads += 1
        log.info("loaded %d API keys from %s", len(records), self.path)

    def find(self, key: str) -> KeyRecord | None:
        """The record whose secret ``key`` carries, or None (unknown, malformed or wrong)."""
        self.refresh()
        parts = split_key(key)
        if parts is None:
            return None
        record = self._by_lookup.get(parts[0])
        if record is None or not record.matches(parts[1]):
            return None
        return record
