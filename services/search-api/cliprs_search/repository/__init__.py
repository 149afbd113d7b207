"""The search-api's SQL, one module per feature, and the only place it talks to PostgreSQL.

Every function is ``async`` and takes an open `AsyncConnection` (the caller decides where a
transaction begins and ends: ``engine.connect()`` to read, ``engine.begin()`` to write); it
returns plain dicts or ids, and nothing here knows about HTTP. The SQL is text (``text(...)``
with bound parameters). SQL the core shares with workers and tools (`cliprs.keys`,
`cliprs.runs.replace_run_polygons`) is synchronous SQLAlchemy Core on a `Connection`; the
repository runs it with ``await conn.run_sync(fn, ...)`` so that callers only ever await
repository functions. No ORM sessions.
"""
