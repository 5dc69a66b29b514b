"""API keys, scopes, route groups, Triton's restricted APIs and the audit log, in-process."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.cli import app
from service.errors import PermissionDenied, Unauthenticated
from service.frontends.grpc.auth import grpc_route
from service.frontends.rest.auth import rest_route
from service.security.audit import AuditLog
from service.security.keys import KeyStore, create_key, read_records, revoke_key, split_key
from service.security.policy import AUTH_FAILURES, Authorizer, credential, parse_restricted
from service.settings import Settings
from tests.helpers import ManualClock


def test_key_file_holds_only_salted_hashes(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    first = create_key(path, "alice", ["infer"])
    second = create_key(path, "bob", ["read", "admin"], ["digits_mlp"], 5, 100)
    text = path.read_text()
    for key in (first, second):
        lookup, secret = split_key(key) or ("", "")
        assert lookup in text and secret not in text and key not in text
    records = read_records(path)
    assert [r.id for r in records] == ["alice", "bob"]
    assert records[0].salt != records[1].salt
    assert records[1].models == ("digits_mlp",) and records[1].rows_per_s == 100
    assert path.stat().st_mode & 0o077 == 0, "the key file is readable by others"


def test_key_lookup_rejects_wrong_malformed_and_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key = create_key(path, "alice", ["infer"])
    store = KeyStore(path)
    found = store.find(key)
    assert found is not None and found.id == "alice"
    _, secret = split_key(key) or ("", "")
    assert store.find(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert store.find("igk_00000000_" + secret) is None
    assert store.find("not-a-key") is None
    assert store.find("") is None


def test_create_refuses_duplicate_ids_and_unknown_scopes(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    create_key(path, "alice", ["infer"])
    with pytest.raises(ValueError, match="exists"):
        create_key(path, "alice", ["infer"])
    with pytest.raises(ValueError, match="scopes"):
        create_key(path, "carol", ["write"])
    assert not revoke_key(path, "nobody")


def test_key_store_reloads_a_rewritten_file_after_its_interval(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key = create_key(path, "alice", ["infer"])
    clock = ManualClock()
    store = KeyStore(path, check_interval_s=5.0, clock=clock)
    assert store.find(key) is not None
    assert revoke_key(path, "alice")
    assert store.find(key) is not None, "re-read before the check interval passed"
    clock.advance(5.0)
    assert store.find(key) is None
    path.write_text("{not json")
    clock.advance(5.0)
    new_key = create_key(tmp_path / "other.json", "bob", ["read"])
    assert store.find(new_key) is None and store.reloads == 2, "a broken file replaced the keys"


def test_rest_routes_fall_into_triton_api_groups() -> None:
    cases = {
        ("GET", "/v2/health/ready"): ("health", "read", ""),
        ("GET", "/v2/models/m/ready"): ("health", "read", "m"),
        ("GET", "/v2"): ("metadata", "read", ""),
        ("GET", "/v2/models/m"): ("metadata", "read", "m"),
        ("GET", "/v2/models/m/versions/2/config"): ("model-config", "read", "m"),
        ("GET", "/v2/models/stats"): ("statistics", "read", ""),
        ("GET", "/v2/models/m/stats"): ("statistics", "read", "m"),
        ("POST", "/v2/models/m/infer"): ("inference", "infer", "m"),
        ("POST", "/v2/models/m/versions/1/infer"): ("inference", "infer", "m"),
        ("POST", "/v1/models/m:predict"): ("inference", "infer", "m"),
        ("POST", "/v2/repository/index"): ("model-repository", "read", ""),
        ("POST", "/v2/repository/models/m/load"): ("model-repository", "admin", "m"),
        ("POST", "/v2/repository/models/m/unload"): ("model-repository", "admin", "m"),
        ("GET", "/v2/systemsharedmemory/status"): ("shared-memory", "admin", ""),
        ("GET", "/v2/trace/setting"): ("trace", "admin", ""),
        ("GET", "/metrics"): ("metrics", "read", ""),
    }
    for (method, path), expected in cases.items():
        route = rest_route(method, path)
        assert (route.group, route.scope, route.model) == expected, path


def test_grpc_methods_fall_into_triton_api_groups() -> None:
    prefix = "/inference.GRPCInferenceService/"
    assert grpc_route(prefix + "ModelInfer", "m").scope == "infer"
    assert grpc_route(prefix + "ModelStreamInfer").group == "inference"
    assert grpc_route(prefix + "RepositoryIndex").scope == "read"
    unload = grpc_route(prefix + "RepositoryModelUnload", "m")
    assert (unload.group, unload.scope, unload.action) == ("model-repository", "admin", "unload")
    assert grpc_route(prefix + "CudaSharedMemoryStatus").group == "shared-memory"
    assert grpc_route(prefix + "ServerLive").group == "health"
    assert grpc_route(prefix + "ModelConfig", "m").group == "model-config"


def test_triton_restricted_api_syntax() -> None:
    assert parse_restricted(["model-repository,metadata:Admin-Key=s3cret"]) == {
        "model-repository": ("admin-key", "s3cret"),
        "metadata": ("admin-key", "s3cret"),
    }
    # the flag value arrives split at its comma from the command line or the environment
    split = parse_restricted(["model-repository", "metadata:k=v", "inference:other=x"])
    assert split == {
        "model-repository": ("k", "v"),
        "metadata": ("k", "v"),
        "inference": ("other", "x"),
    }
    for bad in (["metadata"], ["metadata:novalue"], ["nonsense:k=v"]):
        with pytest.raises(ValueError):
            parse_restricted(bad)


def test_credential_from_bearer_or_x_api_key() -> None:
    assert credential({"authorization": "Bearer abc"}) == "abc"
    assert credential({"authorization": "bearer  abc "}) == "abc"
    assert credential({"x-api-key": "xyz"}) == "xyz"
    assert credential({}) is None


def _authorizer(tmp_path: Path, **settings: object) -> tuple[Authorizer, dict[str, str]]:
    path = tmp_path / "keys.json"
    keys = {
        "infer": create_key(path, "infer-only", ["infer"], ["digits_mlp"]),
        "reader": create_key(path, "reader", ["read"]),
        "admin": create_key(path, "admin", ["infer", "read", "admin"]),
    }
    config = Settings(grpc_port=0, api_keys_file=path, **settings)  # type: ignore[arg-type]
    restricted = parse_restricted(config.http_restricted_api)
    return Authorizer(config, KeyStore(path), restricted, AuditLog()), keys


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_authorizer_scopes_models_and_open_groups(tmp_path: Path) -> None:
    auth, keys = _authorizer(tmp_path)
    infer = rest_route("POST", "/v2/models/digits_mlp/infer")
    assert auth.authorize(infer, _bearer(keys["infer"]), "c").key_id == "infer-only"
    before = AUTH_FAILURES.labels("scope")._value.get()
    with pytest.raises(PermissionDenied, match="lacks the 'infer' scope"):
        auth.authorize(infer, _bearer(keys["reader"]), "c")
    assert AUTH_FAILURES.labels("scope")._value.get() == before + 1
    other = rest_route("POST", "/v2/models/cancer_gbt/infer")
    with pytest.raises(PermissionDenied, match="may not use model 'cancer_gbt'"):
        auth.authorize(other, _bearer(keys["infer"]), "c")
    with pytest.raises(Unauthenticated, match="missing"):
        auth.authorize(infer, {}, "c")
    with pytest.raises(Unauthenticated, match="invalid"):
        auth.authorize(infer, _bearer(keys["admin"] + "x"), "c")
    unload = rest_route("POST", "/v2/repository/models/digits_mlp/unload")
    with pytest.raises(PermissionDenied):
        auth.authorize(unload, _bearer(keys["reader"]), "c")
    assert auth.authorize(unload, _bearer(keys["admin"]), "c").key_id == "admin"
    health = rest_route("GET", "/v2/health/ready")
    assert auth.authorize(health, {}, "c").key_id == "anonymous"
    assert auth.authorize(rest_route("GET", "/metrics"), {}, "c").key_id == "anonymous"


def test_closed_health_and_restricted_groups(tmp_path: Path) -> None:
    auth, keys = _authorizer(
        tmp_path, auth_open_apis=[], http_restricted_api=["model-repository:admin-key=s3cret"]
    )
    with pytest.raises(Unauthenticated):
        auth.authorize(rest_route("GET", "/v2/health/live"), {}, "c")
    unload = rest_route("POST", "/v2/repository/models/digits_mlp/unload")
    with pytest.raises(PermissionDenied, match="expecting header 'admin-key'"):
        auth.authorize(unload, _bearer(keys["admin"]), "c")
    allowed = {**_bearer(keys["admin"]), "admin-key": "s3cret"}
    assert auth.authorize(unload, allowed, "c").key_id == "admin"


def test_audit_log_is_rate_limited_and_counts_what_it_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    audit = AuditLog(max_lines_per_s=2, clock=clock)
    with caplog.at_level(logging.WARNING, logger="infergate.audit"):
        written = [audit.record("auth-failure", reason="invalid", client=f"c{i}") for i in range(5)]
        assert written == [True, True, False, False, False]
        clock.advance(1.0)
        assert audit.record("admin", key="admin", action="unload", model="m", client="c9")
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 3
    assert lines[0] == "audit auth-failure reason=invalid client=c0"
    assert "suppressed 3 audit lines" in lines[2] and "action=unload model=m" in lines[2]


def test_keys_cli_prints_the_key_once_on_its_last_line(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    runner = CliRunner()
    created = runner.invoke(
        app,
        ["keys", "create", "--file", str(path), "--id", "ops", "--scopes", "read,admin"],
    )
    assert created.exit_code == 0, created.output
    key = created.output.strip().splitlines()[-1]
    record = KeyStore(path).find(key)
    assert record is not None and record.scopes == ("read", "admin")
    listed = runner.invoke(app, ["keys", "list", "--file", str(path)])
    assert listed.exit_code == 0 and "ops\tscopes=read,admin" in listed.output
    assert key not in listed.output and record.hash not in listed.output
    bad = runner.invoke(app, ["keys", "create", "--file", str(path), "--id", "x", "--scopes", "y"])
    assert bad.exit_code != 0
    revoked = runner.invoke(app, ["keys", "revoke", "--file", str(path), "--id", "ops"])
    assert revoked.exit_code == 0 and KeyStore(path).find(key) is None
