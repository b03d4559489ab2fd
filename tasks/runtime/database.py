"""The PostgreSQL database behind `marble up --database postgresql://USER[:PASS]@HOST[:PORT]/DB`.

Prefect's server uses DB itself (through asyncpg); MLflow's tracking server uses `DB_mlflow`
on the same server with the same role (through psycopg2: `postgresql+psycopg2://`). They cannot share one database:
each keeps its schema version in a table named `alembic_version`. marble creates
`DB_mlflow` when it is missing.

The password never leaves this module in a message: every URL shown is `masked`, and errors
from the driver have the password cut out. It also never goes on a command line; the
services get their URLs through the environment. A URL without a password works too: libpq
(psycopg2) and asyncpg both read $PGPASSWORD and ~/.pgpass.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

SCHEMES = ("postgresql", "postgres")
MLFLOW_SUFFIX = "_mlflow"
NAME_LIMIT = 63  # bytes in a PostgreSQL identifier; longer names are cut, not refused
CONNECT_TIMEOUT_S = 5
HIDDEN = "***"


class DatabaseError(RuntimeError):
    """The database cannot be reached, or cannot be used as asked (a privilege missing)."""


@dataclass(frozen=True)
class PostgresUrl:
    user: str  # as written in the URL (percent-encoded)
    password: str | None  # as written in the URL (percent-encoded)
    address: str  # host[:port] as written, brackets of an IPv6 address included
    database: str  # decoded

    @property
    def masked(self) -> str:
        """The URL to show: the password replaced by ***."""
        secret = "" if self.password is None else f":{HIDDEN}"
        return f"postgresql://{self.user}{secret}@{self.address}/{quote(self.database)}"

    @property
    def mlflow_database(self) -> str:
        return self.database + MLFLOW_SUFFIX

    def url(self, database: str | None = None, driver: str = "") -> str:
        """The full URL (password included) of `database` (default: this one's), with an
        SQLAlchemy driver suffix such as "+asyncpg" when given."""
        secret = "" if self.password is None else f":{self.password}"
        name = quote(database or self.database)
        return f"postgresql{driver}://{self.user}{secret}@{self.address}/{name}"

    @property
    def prefect_url(self) -> str:
        """PREFECT_API_DATABASE_CONNECTION_URL: the database itself, through asyncpg."""
        return self.url(driver="+asyncpg")

    @property
    def mlflow_url(self) -> str:
        """MLflow's backend store: DB_mlflow, through psycopg2, named (SQLAlchemy 2.1's
        default driver for postgresql:// is psycopg 3, which marble does not install)."""
        return self.url(self.mlflow_database, driver="+psycopg2")

    def hide(self, text: str) -> str:
        """`text` with the password cut out, as written and as decoded."""
        if self.password:
            for secret in {self.password, unquote(self.password)}:
                text = text.replace(secret, HIDDEN)
        return text


def parse_url(text: str) -> PostgresUrl:
    """Check a PostgreSQL URL; a ValueError names what is wrong (and never the password)."""
    parts = urlsplit(text.strip())
    login, at, address = parts.netloc.rpartition("@")
    user, colon, password = login.partition(":")
    masked_login = f"{user}:{HIDDEN}@" if colon else login + at
    shown = parts._replace(netloc=masked_login + address).geturl()
    if parts.scheme not in SCHEMES:
        raise ValueError(
            f"{shown!r} is not a PostgreSQL URL: write postgresql://USER[:PASS]@HOST[:PORT]/DB"
        )
    if not at or not user:
        raise ValueError(f"{shown!r} names no user: write postgresql://USER[:PASS]@HOST/DB")
    if not parts.hostname:
        raise ValueError(f"{shown!r} names no host: write postgresql://USER[:PASS]@HOST/DB")
    try:
        port = parts.port  # raises on a port that is not a number in 0..65535
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError(f"{shown!r} has a bad port: write a number in 1..65535")
    database = unquote(parts.path.removeprefix("/"))
    if not database or "/" in database:
        raise ValueError(f"{shown!r} names no database: write postgresql://USER@HOST/DB")
    if parts.query or parts.fragment:
        raise ValueError(
            f"{shown!r}: options after '?' or '#' are not supported; set PG* environment "
            "variables (PGSSLMODE, ...) instead"
        )
    if len((database + MLFLOW_SUFFIX).encode()) > NAME_LIMIT:
        raise ValueError(
            f"database name {database!r} is too long: MLflow's {database + MLFLOW_SUFFIX!r} "
            f"must fit PostgreSQL's {NAME_LIMIT} bytes"
        )
    return PostgresUrl(user, password if colon else None, address, database)


# ---------------------------------------------------------------------------- checks


def _connect(url: PostgresUrl, database: str):
    """A psycopg2 connection in autocommit mode; DatabaseError when it cannot be made."""
    try:
        import psycopg2
    except ImportError:
        raise DatabaseError(
            "PostgreSQL needs psycopg2: pip install psycopg2-binary (marble's `scale` extra)"
        ) from None
    try:
        connection = psycopg2.connect(url.url(database), connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg2.Error as e:
        reason = " ".join(str(e).split())  # libpq's message spans lines
        masked = url.masked.rsplit("/", 1)[0] + "/" + quote(database)
        raise DatabaseError(f"cannot connect to {masked}: {url.hide(reason)}") from None
    connection.autocommit = True
    return connection


def _check_can_create_tables(connection, url: PostgresUrl, database: str) -> None:
    """Prefect and MLflow create their tables on first start: the role needs CREATE on the
    schema they land in (PostgreSQL 15 gives that on `public` to the database owner only)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_schema(), has_schema_privilege(current_schema(), 'CREATE')")
        schema, allowed = cursor.fetchone()
    if schema is None or not allowed:
        where = f"schema {schema!r}" if schema else "any schema on its search_path"
        raise DatabaseError(
            f"role {unquote(url.user)!r} cannot create tables in {where} of database "
            f'{database!r} on {url.masked}: make it the owner (ALTER DATABASE "{database}" '
            f'OWNER TO "{unquote(url.user)}") or GRANT CREATE ON SCHEMA {schema or "public"}'
        )


def prepare(url: PostgresUrl) -> bool:
    """Before anything starts: connect (short timeout), create DB_mlflow when it is missing,
    and check that both databases take new tables. Returns True when it created DB_mlflow.
    Raises DatabaseError with one line naming the (masked) URL and what is missing."""
    import psycopg2
    from psycopg2 import errors, sql

    created = False
    connection = _connect(url, url.database)
    try:
        _check_can_create_tables(connection, url, url.database)
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.mlflow_database,))
            if cursor.fetchone() is None:
                statement = sql.SQL("CREATE DATABASE {}").format(
                    sql.Identifier(url.mlflow_database)
                )
                try:
                    cursor.execute(statement)
                    created = True
                except errors.DuplicateDatabase:
                    pass  # made by someone else since the check
                except errors.InsufficientPrivilege:
                    raise DatabaseError(
                        f"cannot create MLflow's database {url.mlflow_database!r} on "
                        f"{url.masked}: role {unquote(url.user)!r} lacks the CREATEDB "
                        f"privilege; create it once as an administrator (CREATE DATABASE "
                        f'"{url.mlflow_database}" OWNER "{unquote(url.user)}") or ALTER '
                        "ROLE ... CREATEDB"
                    ) from None
                except psycopg2.Error as e:
                    reason = url.hide(" ".join(str(e).split()))
                    raise DatabaseError(
                        f"cannot create MLflow's database {url.mlflow_database!r} on "
                        f"{url.masked}: {reason}"
                    ) from None
    finally:
        connection.close()
    connection = _connect(url, url.mlflow_database)
    try:
        _check_can_create_tables(connection, url, url.mlflow_database)
    finally:
        connection.close()
    return created
