-- Run once by the postgres image (infra/compose.yaml), on an empty data directory, as
-- $POSTGRES_USER in the database $POSTGRES_DB (Prefect's). MLflow gets a database of its
-- own, named by $MLFLOW_DB: Prefect and MLflow both keep their schema version in a table
-- named alembic_version, so they cannot share one.
\set ON_ERROR_STOP on
\getenv mlflow_db MLFLOW_DB
CREATE DATABASE :"mlflow_db";
