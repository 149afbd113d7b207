"""The search-api's SQL, one module per feature. Functions are ``async`` and take an open
`AsyncConnection` (the caller decides where a transaction begins and ends); they return plain
dicts or ids, and nothing here knows about HTTP. SQL shared with the workers and tools
(`cliprs.keys`, `cliprs.runs`) is synchronous and is called through ``conn.run_sync``."""
