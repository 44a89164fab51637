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
import sys
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


# ----------------------------------------------------------------------------- object storage
S3_ENV_VARS = ("MLCYCLE_S3_ENDPOINT", "MLCYCLE_S3_BUCKET", "MLCYCLE_S3_PREFIX", "MLCYCLE_S3_CREATE_BUCKET")
S3_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
DEFAULT_S3_REGION = "us-east-1"
# A name S3 accepts: 3–63 lower-case letters, digits, dots and hyphens, starting and ending alphanumeric.
BUCKET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class ObjectStoreError(RuntimeError):
    """The object store cannot be used as the environment describes it; the message names the variable."""


@dataclass(frozen=True)
class ObjectStore:
    """Where the bulk files go when the environment names an S3-compatible store.

    ``MLCYCLE_S3_ENDPOINT`` (``http(s)://host:port``) and ``MLCYCLE_S3_BUCKET`` turn it on; without
    them every file stays under the project's ``data/``. ``MLCYCLE_S3_PREFIX`` puts a project's keys
    under a prefix of a shared bucket; ``MLCYCLE_S3_CREATE_BUCKET=1`` allows creating a missing bucket
    (otherwise a missing bucket is an error: a typo must not make a new, empty store). Credentials
    are the standard ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` that boto3 and MLflow read;
    none of this ever comes from the project's config file."""

    endpoint: str
    bucket: str
    prefix: str = ""
    create_bucket: bool = False
    region: str = DEFAULT_S3_REGION

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ObjectStore | None:
        env = os.environ if environ is None else environ
        endpoint, bucket = env.get("MLCYCLE_S3_ENDPOINT", "").strip(), env.get("MLCYCLE_S3_BUCKET", "").strip()
        if not endpoint and not bucket:
            return None
        if not endpoint or not bucket:
            missing = "MLCYCLE_S3_ENDPOINT" if not endpoint else "MLCYCLE_S3_BUCKET"
            raise ObjectStoreError(
                f"object storage half configured: set {missing} too, or unset both to keep files local"
            )
        parts = urlsplit(endpoint)
        try:
            parts.port  # noqa: B018  (a port that is not a number raises here)
        except ValueError:
            parts = urlsplit("")
        if (parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/")
                or "@" in parts.netloc):  # fmt: skip
            shown = redact(endpoint)
            raise ObjectStoreError(f"MLCYCLE_S3_ENDPOINT={shown!r}: expected http(s)://host:port (keys in AWS_*)")
        if not BUCKET_PATTERN.match(bucket):
            raise ObjectStoreError(f"MLCYCLE_S3_BUCKET={bucket!r}: 3–63 lower-case letters, digits, dots and hyphens")
        missing = [v for v in S3_CREDENTIALS if not env.get(v)]
        if missing:
            raise ObjectStoreError(
                f"MLCYCLE_S3_ENDPOINT is set but {' and '.join(missing)} not: export the store's keys"
            )
        prefix = env.get("MLCYCLE_S3_PREFIX", "").strip("/")
        create = env.get("MLCYCLE_S3_CREATE_BUCKET", "").lower() in ("1", "true", "yes")
        region = env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or DEFAULT_S3_REGION
        return cls(endpoint.rstrip("/"), bucket, prefix, create, region)

    def uri(self, *parts: str) -> str:
        """``s3://bucket/prefix/parts…``."""
        keys = "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))
        return f"s3://{self.bucket}/{keys}"

    def client_env(self) -> dict[str, str]:
        """What MLflow's S3 artifact store (boto3) needs besides the keys: the endpoint and a region."""
        return {"MLFLOW_S3_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": self.region}

    def client(self) -> object:
        import boto3
        from botocore.config import Config

        config = Config(s3={"addressing_style": "path"}, connect_timeout=2, read_timeout=30,
                        retries={"max_attempts": 2, "mode": "standard"})  # fmt: skip
        # A session of its own: boto3's default session keeps the keys it first read from the environment.
        return boto3.session.Session().client("s3", endpoint_url=self.endpoint, region_name=self.region, config=config)


_checked_stores: set[ObjectStore] = set()


def ensure_object_store(store: ObjectStore) -> bool:
    """Check once per process that the store answers with these keys and the bucket exists (created
    only with ``MLCYCLE_S3_CREATE_BUCKET=1``), and export what MLflow's S3 client reads. True if the
    bucket was created. Each failure names the variable to fix, never the secret."""
    os.environ.update(store.client_env())
    with _ensure_lock:
        if store in _checked_stores:
            return False
        from botocore.exceptions import ClientError, EndpointConnectionError

        client = store.client()
        created = False
        try:
            client.head_bucket(Bucket=store.bucket)  # type: ignore[attr-defined]
        except EndpointConnectionError:
            raise ObjectStoreError(f"MLCYCLE_S3_ENDPOINT={store.endpoint}: no S3 server answers there; start it "
                                   "or set MLCYCLE_S3_ENDPOINT to one that runs") from None  # fmt: skip
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
                keys = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
                raise ObjectStoreError(f"the S3 server at {store.endpoint} refused {keys} ({code}): export the "
                                       "store's keys") from None  # fmt: skip
            if code not in ("404", "NoSuchBucket", "NotFound"):
                raise ObjectStoreError(f"the S3 server at {store.endpoint} answered {code} for bucket "
                                       f"{store.bucket}") from None  # fmt: skip
            if not store.create_bucket:
                where = f"MLCYCLE_S3_BUCKET={store.bucket}: no such bucket at {store.endpoint}"
                fix = "create it, or set MLCYCLE_S3_CREATE_BUCKET=1 to let mlcycle create it"
                raise ObjectStoreError(f"{where}; {fix}") from None
            client.create_bucket(Bucket=store.bucket)  # type: ignore[attr-defined]
            created = True
        _checked_stores.add(store)
        _forget_mlflow_s3_clients()
        return created


def _forget_mlflow_s3_clients() -> None:
    """MLflow caches its boto3 client by endpoint, and boto3's default session the keys it first read
    from the environment: a process that moves to another store (a restore into another bucket, a
    test's own server) would sign with the previous keys. Both are dropped whenever a store is
    checked for the first time."""
    module = sys.modules.get("mlflow.store.artifact.s3_artifact_repo")
    cached = getattr(module, "_cached_get_s3_client", None)
    if cached is not None and hasattr(cached, "cache_clear"):
        cached.cache_clear()
    boto3 = sys.modules.get("boto3")
    if boto3 is not None:  # MLflow's clients come from boto3's default session, which keeps the keys it read first
        boto3.DEFAULT_SESSION = None
