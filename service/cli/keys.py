"""``infergate keys create|list|revoke``: manage the API key file (hashes only).

``create`` prints the new key once, on its last line; nothing else ever shows it again.
"""

from __future__ import annotations

from pathlib import Path

import typer

from service.security.keys import SCOPES, create_key, read_records, revoke_key

app = typer.Typer(help="Manage API keys (the file holds only salted hashes).", no_args_is_help=True)

FILE_OPTION = typer.Option(..., "--file", envvar="INFERGATE_API_KEYS_FILE", help="key file")


def _split(values: str) -> list[str]:
    return [part.strip() for part in values.split(",") if part.strip()]


@app.command()
def create(
    file: Path = FILE_OPTION,
    key_id: str = typer.Option(..., "--id", help="name of the key (who holds it)"),
    scopes: str = typer.Option("infer", help=f"comma-separated: {', '.join(SCOPES)}"),
    models: str = typer.Option("", help="comma-separated models it may use; empty = all"),
    requests_per_s: float = typer.Option(0.0, help="infer requests/s; 0 = unlimited"),
    rows_per_s: float = typer.Option(0.0, help="infer rows/s; 0 = unlimited"),
) -> None:
    """Add a key; its plain value is printed once, on the last line."""
    try:
        key = create_key(file, key_id, _split(scopes), _split(models), requests_per_s, rows_per_s)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(f"created key '{key_id}' in {file}; store it now, it is not shown again:")
    typer.echo(key)


@app.command("list")
def list_keys(file: Path = FILE_OPTION) -> None:
    """One line per key: id, scopes, models, limits (never a key or its hash)."""
    for record in read_records(file):
        models = ",".join(record.models) or "*"
        typer.echo(
            f"{record.id}\tscopes={','.join(record.scopes)}\tmodels={models}\t"
            f"requests_per_s={record.requests_per_s:g}\trows_per_s={record.rows_per_s:g}"
        )


@app.command()
def revoke(
    file: Path = FILE_OPTION,
    key_id: str = typer.Option(..., "--id", help="name of the key to remove"),
) -> None:
    """Remove a key; running gateways stop accepting it at their next file check."""
    if not revoke_key(file, key_id):
        raise typer.BadParameter(f"no key '{key_id}' in {file}")
    typer.echo(f"revoked key '{key_id}'")
