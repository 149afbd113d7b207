"""The admin command line for API keys (the database is ``CLIPRS_DATABASE_URL``).

    python -m cliprs_tools.keys create --name "field team" --scope write [--scope read] [--daily-tile-budget 5000]
    python -m cliprs_tools.keys list [--active]
    python -m cliprs_tools.keys revoke ck_1a2b3c4d        (or the key's numeric id)

``create`` prints the key once; only its SHA-256 is stored. Scopes: read, write, admin (admin
grants write and read). Every change is recorded in the audit trail (actor ``cli ...``). A
revoked key is refused by every search-api process from its next request on.
"""

from __future__ import annotations

import argparse
import getpass
import os
import socket
import sys
from pathlib import Path

from cliprs import keys as repo
from cliprs.db.engine import sync_engine
from cliprs.settings import CoreSettings


def _actor() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"cli {user}@{socket.gethostname()}"


def create_key(
    database_url: str, name: str, scopes: list[str], daily_tile_budget: int | None = None
) -> tuple[dict, str]:
    """Create a key (and its audit row); answers its row and its text."""
    engine = sync_engine(database_url)
    try:
        with engine.begin() as conn:
            row, secret = repo.create_key(conn, name, scopes, daily_tile_budget)
            repo.record_audit(
                conn,
                action="key.create",
                actor=_actor(),
                target=f"key:{row['id']}",
                changes={
                    "request": {"name": name, "scopes": row["scopes"], "daily_tile_budget": daily_tile_budget}
                },
            )
        return row, secret
    finally:
        engine.dispose()


def list_keys(database_url: str, include_revoked: bool = True) -> list[dict]:
    engine = sync_engine(database_url)
    try:
        with engine.connect() as conn:
            return repo.list_keys(conn, include_revoked)
    finally:
        engine.dispose()


def revoke_key(database_url: str, ref: str) -> dict | None:
    """Revoke a key by id or prefix; None when there is no such key."""
    engine = sync_engine(database_url)
    try:
        with engine.begin() as conn:
            row = repo.find_key(conn, ref)
            if row is None:
                return None
            row = repo.revoke_key(conn, row["id"])
            repo.record_audit(
                conn, action="key.revoke", actor=_actor(), target=f"key:{row['id']}", changes={}
            )
            return row
    finally:
        engine.dispose()


def key_is_active(database_url: str, key: str) -> bool:
    engine = sync_engine(database_url)
    try:
        with engine.connect() as conn:
            row = repo.key_for_secret(conn, key)
        return row is not None and row["revoked_at"] is None and "admin" in row["scopes"]
    finally:
        engine.dispose()


def local_admin_key(database_url: str, path: Path) -> str:
    """The local stack's admin key, kept in ``path`` (mode 0600): reused while it is valid,
    created (and printed once) otherwise."""
    if path.exists():
        key = path.read_text().strip()
        if key and key_is_active(database_url, key):
            print(f"==> admin API key: the one in {path}")
            return key
    _, key = create_key(database_url, "devstack admin", ["admin"])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    print(f"==> created an admin API key (kept in {path})")
    return key


def _show(row: dict) -> str:
    state = f"revoked {row['revoked_at']:%Y-%m-%d %H:%M}" if row["revoked_at"] else "active"
    budget = "" if row["daily_tile_budget"] is None else f"  tiles/day {row['daily_tile_budget']}"
    return f"{row['id']:>5}  {row['prefix']}  {','.join(row['scopes']):<16} {state:<24} {row['name']}{budget}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cliprs_tools.keys", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("create", help="create a key and print it (once)")
    c.add_argument("--name", required=True, help="who or what the key is for")
    c.add_argument("--scope", action="append", required=True, choices=repo.SCOPES, help="repeat for several")
    c.add_argument("--daily-tile-budget", type=int, default=None, help="remote tiles per UTC day")
    ls = sub.add_parser("list", help="list the keys (never their secrets)")
    ls.add_argument("--active", action="store_true", help="leave revoked keys out")
    r = sub.add_parser("revoke", help="revoke a key by id or prefix (ck_...)")
    r.add_argument("key", help="the key's id or public prefix")
    args = parser.parse_args(argv)
    url = CoreSettings().database_url
    if args.command == "create":
        if args.daily_tile_budget is not None and args.daily_tile_budget < 0:
            parser.error("--daily-tile-budget must be 0 or more")
        row, secret = create_key(url, args.name, args.scope, args.daily_tile_budget)
        print(_show(row))
        print(f"\n{secret}\n\nThis is the key: it is shown once and stored only as a hash. Send it as")
        print("'Authorization: Bearer <key>' or 'X-API-Key: <key>'.")
    elif args.command == "list":
        rows = list_keys(url, include_revoked=not args.active)
        print("\n".join(_show(row) for row in rows) or "no keys")
    else:
        row = revoke_key(url, args.key)
        if row is None:
            print(f"error: no API key {args.key!r}; `list` shows the keys", file=sys.stderr)
            return 1
        print(_show(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
