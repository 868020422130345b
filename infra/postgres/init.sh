#!/bin/sh
# Runs once, as the superuser (POSTGRES_USER), when the data volume is empty:
# the official image runs /docker-entrypoint-initdb.d/*.sh on first start.
# Two login roles, neither superuser nor able to create databases or roles,
# each the owner of its own database and unable to connect to the other:
#   seke    -> database seke (our schema; Alembic migrates it as its owner)
#   prefect -> database prefect (the Prefect server's)
# Passwords come from the environment through psql variables (quoted by psql,
# so any character is safe). pg_trgm, which Prefect's migrations create, is
# created here so the prefect role needs no extension rights.
set -eu
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres \
    -v seke_password="$POSTGRES_SEKE_PASSWORD" -v prefect_password="$POSTGRES_PREFECT_PASSWORD" <<'SQL'
CREATE ROLE seke LOGIN PASSWORD :'seke_password' NOSUPERUSER NOCREATEDB NOCREATEROLE;
CREATE ROLE prefect LOGIN PASSWORD :'prefect_password' NOSUPERUSER NOCREATEDB NOCREATEROLE;
CREATE DATABASE seke OWNER seke;
CREATE DATABASE prefect OWNER prefect;
REVOKE ALL ON DATABASE seke FROM PUBLIC;
REVOKE ALL ON DATABASE prefect FROM PUBLIC;
\connect prefect
CREATE EXTENSION IF NOT EXISTS pg_trgm;
SQL
