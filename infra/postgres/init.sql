-- Prefect's server gets its own database beside ours (`seke`), so the two
-- schemas and their migrations never meet. The official postgres image runs
-- this once, as the POSTGRES_USER (seke), when the data volume is empty.
CREATE DATABASE prefect;
