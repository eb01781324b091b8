"""`flask --app web.app keys create|list|revoke`: API keys, kept in the app's Redis (REDIS_URL).

`create NAME` prints the new key as the last line of its output, once: only its SHA-256 is kept.
"""

from __future__ import annotations

import click
from flask.cli import AppGroup

from shared.jobs.schema import iso
from web.middleware import auth
from web.services import services

keys = AppGroup("keys", help="Create, list and revoke API keys (stored in REDIS_URL's Redis).")


@keys.command("create")
@click.argument("name")
def create(name: str) -> None:
    """Make a key for NAME; prints it as the last line (shown once, never stored)."""
    try:
        key = auth.create_key(services().redis, name)
    except auth.KeyStoreError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Created the API key '{name}'. It is shown only this once; its jobs are owned by 'key:{name}'.")
    click.echo("Clients send it as 'Authorization: Bearer <key>'. The key:")
    click.echo(key)


@keys.command("list")
def list_() -> None:
    """Names and creation times (the keys themselves are not stored)."""
    rows = auth.list_keys(services().redis)
    if not rows:
        click.echo("No API keys.")
        return
    width = max(len(row["name"]) for row in rows)
    click.echo(f"{'NAME'.ljust(width)}  CREATED")
    for row in rows:
        click.echo(f"{row['name'].ljust(width)}  {iso(row['created_at'])}")


@keys.command("revoke")
@click.argument("name")
def revoke(name: str) -> None:
    """Revoke NAME's key at once (its jobs stay, owned by 'key:NAME')."""
    try:
        auth.revoke_key(services().redis, name)
    except auth.KeyStoreError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Revoked the API key '{name}'.")
