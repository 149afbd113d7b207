"""Database models, engines and migrations (PostgreSQL + PostGIS, SRID 4326)."""
