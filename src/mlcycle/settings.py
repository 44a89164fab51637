"""Connection settings of the ``scale`` profile: Redis and PostgreSQL, from the environment only.

The config file says *which* profile a project runs (``profile: scale`` or ``MLCYCLE_PROFILE``);
*where* its servers are is deployment knowledge, so it comes from the environment, never from a
file checked into the project:

- ``MLCYCLE_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``): Feast's online store.
- ``MLCYCLE_REDIS_PREFIX`` (default empty): appended to the Feast project name. Feast ends every
  Redis key with the project name and keys its SQL registry rows by it, so projects (or tests)
  with different prefixes share one Redis and one registry without seeing each other's rows.
- ``MLCYCLE_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432/mlcycle``): the database of
  the MLflow tracking store and model registry, the promotion log, the prediction log and the Feast
  registry. Prefect's server gets a database of its own beside it (``<name>_prefect``): its
  migrations own their schema.

Databases are created when missing (``ensure_database``), never dropped: dropping is a decision
for a person, not for a library that may point at production by mistake.

Feast expands ``${VAR}`` in ``feature_store.scale.yaml`` but cannot parse a ``redis://`` URL nor
take defaults, so ``feast_env`` derives the exact values that file reads (``MLCYCLE_FEAST_*``);
``export_feast_env`` puts them in this process's environment and ``mlcycle scale-env`` prints
them for a shell that runs the ``feast`` CLI.

Passwords in these URLs never leave the process in clear: ``redact`` is the one helper every
message, log line, pid file and command line that may hold a connection URL goes through.

A leaf at the bottom of the layers (docs/architecture.md): the project config, the stores, serving
and the stack all read these settings, so this module imports nothing of mlcycle. Nothing heavy is
imported here either: reading a config file must stay cheap, and psycopg is imported only by the
function that needs it.
"""

from __future__ import annotations

import os
import re
import shlex
import threading
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

import sqlalchemy as sa

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/mlcycle"
PREFECT_DATABASE_SUFFIX = "_prefect"
# Both a Redis key suffix and part of a Feast project name, a database name's neighbour: keep it plain.
PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9_]*$")
# Online reads must fail fast when Redis is gone, so serving answers 503 at once instead of hanging.
# redis-py's default retries 3 times with up to 10 s of backoff (tens of seconds per request);
# ``retry=null`` turns that off — a pooled connection that died with a restarted Redis is still
# replaced when it is checked out, so recovery needs no retry.
REDIS_CLIENT_OPTIONS = "socket_connect_timeout=1,socket_timeout=5,retry=null"

ENV_VARS = ("MLCYCLE_REDIS_URL", "MLCYCLE_REDIS_PREFIX", "MLCYCLE_PG_URL")
REDACTED = "***"
# ``scheme://user:password@host``: the password runs to the last "@" of the authority (an unencoded
# "@" in a password is common in hand-written URLs, and urlsplit splits the same way).
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*):(?P<secret>[^/?#\s]*)@")
# ``password=…`` as a libpq query parameter (``?password=``) or in Feast's Redis connection string.
_KEY_PASSWORD = re.compile(r"(?P<head>\bpassword=)(?P<secret>[^,&;\s]*)", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with every password of a connection URL (or ``password=`` parameter) replaced by
    ``***``. Used on anything that leaves the process: error messages, log lines, pid files,
    command lines (``ps`` shows a process's arguments to every user of the machine)."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}:{REDACTED}@", text)
    return _KEY_PASSWORD.sub(lambda m: m["head"] + REDACTED, text)


class ScaleConfigError(ValueError):
    """An MLCYCLE_* connection variable cannot be used; the message names it."""


@dataclass(frozen=True)
class ScaleSettings:
    """Where the scale profile's servers are. ``from_env`` is the only intended constructor."""

    redis_url: str = DEFAULT_REDIS_URL
    redis_prefix: str = ""
    pg_url: str = DEFAULT_PG_URL

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ScaleSettings:
        env = os.environ if environ is None else environ
        settings = cls(
            redis_url=env.get("MLCYCLE_REDIS_URL") or DEFAULT_REDIS_URL,
            redis_prefix=env.get("MLCYCLE_REDIS_PREFIX", ""),
            pg_url=env.get("MLCYCLE_PG_URL") or DEFAULT_PG_URL,
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if not PREFIX_PATTERN.match(self.redis_prefix):
            raise ScaleConfigError(
                f"MLCYCLE_REDIS_PREFIX={self.redis_prefix!r}: use letters, digits and underscores only "
                "(it becomes part of the Feast project name)"
            )
        redis = urlsplit(self.redis_url)
        if redis.scheme not in ("redis", "rediss") or not redis.hostname:
            raise ScaleConfigError(f"MLCYCLE_REDIS_URL={redact(self.redis_url)!r}: expected redis://host:port/db")
        pg = urlsplit(self.pg_url)
        if not pg.scheme.startswith(("postgresql", "postgres")) or not pg.hostname or not self.database:
            raise ScaleConfigError(
                f"MLCYCLE_PG_URL={redact(self.pg_url)!r}: expected postgresql://user@host:port/database"
            )

    # ------------------------------------------------------------------ PostgreSQL
    @property
    def database(self) -> str:
        return urlsplit(self.pg_url).path.lstrip("/")

    @property
    def prefect_database(self) -> str:
        return self.database + PREFECT_DATABASE_SUFFIX

    def sqlalchemy_url(self, database: str | None = None, driver: str = "psycopg") -> str:
        """``MLCYCLE_PG_URL`` as a SQLAlchemy URL with an explicit driver (psycopg 3 by default:
        a bare ``postgresql://`` would make SQLAlchemy look for psycopg2), optionally another
        database on the same server. asyncpg gets no query string: it takes no libpq options."""
        parts = urlsplit(self.pg_url)
        path = "/" + (database or self.database)
        query = "" if driver == "asyncpg" else parts.query
        return urlunsplit((f"postgresql+{driver}", parts.netloc, path, query, ""))

    @property
    def tracking_uri(self) -> str:
        """MLflow's backend store (runs, metrics, model registry); artifacts stay on files."""
        return self.sqlalchemy_url()

    @property
    def prefect_database_url(self) -> str:
        """What ``PREFECT_API_DATABASE_CONNECTION_URL`` gets: Prefect's server runs on asyncpg."""
        return self.sqlalchemy_url(self.prefect_database, driver="asyncpg")

    # ------------------------------------------------------------------ Redis / Feast
    @property
    def feast_project_suffix(self) -> str:
        return f"_{self.redis_prefix}" if self.redis_prefix else ""

    @property
    def feast_redis_connection(self) -> str:
        """``MLCYCLE_REDIS_URL`` in Feast's ``host:port,db=N,password=…`` form, with fail-fast
        client options (``REDIS_CLIENT_OPTIONS``)."""
        url = urlsplit(self.redis_url)
        parts = [f"{url.hostname}:{url.port or 6379}"]
        db = url.path.lstrip("/")
        parts.append(f"db={int(db) if db else 0}")
        if url.username:
            parts.append(f"username={unquote(url.username)}")
        if url.password:
            parts.append(f"password={unquote(url.password)}")
        if url.scheme == "rediss":
            parts.append("ssl=true")
        return ",".join([*parts, REDIS_CLIENT_OPTIONS])

    def feast_env(self) -> dict[str, str]:
        """The variables ``feature_repo/feature_store.scale.yaml`` reads."""
        return {
            "MLCYCLE_FEAST_PROJECT_SUFFIX": self.feast_project_suffix,
            "MLCYCLE_FEAST_REDIS": self.feast_redis_connection,
            "MLCYCLE_FEAST_REGISTRY_URL": self.sqlalchemy_url(),
        }

    def shell_exports(self) -> str:
        """``export`` lines for a shell: the connection settings (defaults filled in) and the
        derived Feast variables, so ``feast -f feature_store.scale.yaml …`` works there too."""
        values = {
            "MLCYCLE_PROFILE": "scale",
            "MLCYCLE_REDIS_URL": self.redis_url,
            "MLCYCLE_REDIS_PREFIX": self.redis_prefix,
            "MLCYCLE_PG_URL": self.pg_url,
            **self.feast_env(),
        }
        return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in values.items())


def export_feast_env(settings: ScaleSettings) -> None:
    """Put the derived Feast variables in ``os.environ`` (Feast reads the yaml through it). They
    are recomputed on every call, so a change of MLCYCLE_* variables is followed."""
    os.environ.update(settings.feast_env())


_ensured: set[str] = set()
_ensure_lock = threading.Lock()


def ensure_database(url: str) -> bool:
    """Create the PostgreSQL database ``url`` names if it does not exist; True if it was created.

    Any other URL (sqlite, file) is left alone. Checked once per process and URL. ``CREATE
    DATABASE`` cannot run in a transaction, hence autocommit on the server's ``postgres`` database;
    two processes racing to create it are fine (the loser sees DuplicateDatabase)."""
    parts = urlsplit(url)
    if not parts.scheme.startswith(("postgresql", "postgres")):
        return False
    database = parts.path.lstrip("/")
    key = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    with _ensure_lock:
        if key in _ensured:
            return False
        import psycopg
        from psycopg import sql

        maintenance = urlunsplit(("postgresql", parts.netloc, "/postgres", parts.query, ""))
        created = False
        with psycopg.connect(maintenance, autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
            if not exists:
                try:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
                    created = True
                except psycopg.errors.DuplicateDatabase:
                    pass
        _ensured.add(key)
        return created


def forget_ensured() -> None:
    """Forget which databases were checked (a test that dropped its database calls this)."""
    with _ensure_lock:
        _ensured.clear()


def log_table(uri: str, name: str, *columns: sa.Column) -> tuple[sa.Engine, sa.Table]:
    """An append-only log table (id, at, model, then ``columns``) in the database at ``uri``, created
    if missing — with its SQLite folder or PostgreSQL database (MLflow creates tables, not those)."""
    if uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(uri[len("sqlite:///") :]) or ".", exist_ok=True)
    ensure_database(uri)
    engine = sa.create_engine(uri)
    table = sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        *columns,
    )
    table.metadata.create_all(engine, checkfirst=True)
    return engine, table
