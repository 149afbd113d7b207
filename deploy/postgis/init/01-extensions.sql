-- Run by the postgres entrypoint only on the first start with an empty data volume, in the
-- database named by POSTGRES_DB (cliprs). Mounting this folder hides the image's own
-- 10_postgis.sh, so the extension is created here. The Alembic migration
-- (python -m cliprs.db.migrate) asks for it too, with IF NOT EXISTS.
CREATE EXTENSION IF NOT EXISTS postgis;
