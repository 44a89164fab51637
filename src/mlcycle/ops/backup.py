"""``mlcycle backup DEST`` / ``mlcycle restore SRC``: a project's state as one versioned directory,
and back, checked against a manifest of hashes.

What a backup holds, and what it leaves out on purpose:

- **SQLite databases** (the MLflow registry and tracking store, the promotion log, any other
  ``*.db`` mlcycle keeps under ``data/``): copied with SQLite's online backup API, so each is a
  consistent snapshot even while a flow or the service writes to it.
- **Files**: artifacts (models, training snapshots, reports), feature tables, the prediction log,
  monitoring reports and their reference, the offline event log, model cards.
- **The project's definitions**: its config, data contract and Feast feature repo, so a restore on an
  empty machine has a project to run.
- **Left out**, each rebuilt by the tool that made it: the Feast registry and online store
  (``mlcycle features publish``, from the feature repo and the tables), the BentoML store
  (``mlcycle build``), Prefect's run history and the pid files of a running stack, the live
  broker's append-only file (the offline event log is kept).

The databases are copied one after another, not in one transaction across them: a promotion that
lands during a backup may be in the promotion log and not yet on the alias, or the reverse. Take a
backup when no rollout is running, or take another. The restore refuses a project that has state
(``data/`` not empty): it restores next to nothing, never over something.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import sqlalchemy as sa

from mlcycle.project.config import DEFAULT_CONFIG_NAME, ProjectConfig, load_config
from mlcycle.settings import ObjectStore, ScaleSettings, ensure_database, ensure_object_store, forget_ensured, redact

FORMAT = 1
MANIFEST = "manifest.json"
DATA, PROJECT, POSTGRES, OBJECTS = "data", "project", "postgres", "s3"
SQLITE_HEADER = b"SQLite format 3\x00"
# Under data/: rebuilt by the tool that made it, or the state of live processes.
LEFT_OUT = {
    "bentoml": "the BentoML store: `mlcycle build` makes the Bento again",
    "prefect": "Prefect's server database (run history): not needed to serve or retrain",
    "run": "pid files of a running stack",
    "stream/broker": "the live broker's append-only file (the offline event log in stream/events is kept)",
    # The local Feast registry records what the online store holds; restored without the store it
    # would make `features publish` skip the load. Both are rebuilt from feature_repo/ and the tables.
    "feast": "the Feast registry and online store: `mlcycle features publish` rebuilds both",
    "retraining.lock": "a lock file",
}
# MLflow's columns that hold absolute locations under the project's data directory.
LOCATIONS = {
    "experiments": ["artifact_location"],
    "runs": ["artifact_uri"],
    "model_versions": ["source", "storage_location"],
    "logged_models": ["artifact_location"],
    "tags": ["value"],
    "params": ["value"],
    "model_version_tags": ["value"],
}

Progress = Callable[[str], None]


class BackupError(RuntimeError):
    """A backup or restore that cannot go on; ``fix`` says what to do. Nothing was left half-written."""

    def __init__(self, message: str, fix: str):
        super().__init__(f"{message}: {fix}")
        self.fix = fix


@dataclass
class Manifest:
    format: int
    created_at: str
    mlcycle_version: str
    project: str
    profile: str
    model: str
    data_root: str  # where data/ was, so a restore elsewhere can relocate MLflow's absolute paths
    config_name: str
    database: str | None = None  # profile scale: the PostgreSQL database dumped (never its URL)
    object_store: str | None = None  # with MLCYCLE_S3_*: the project's s3://bucket/prefix/ copied into s3/
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # path in the backup → sha256, bytes
    left_out: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total_bytes(self) -> int:
        return sum(int(f["bytes"]) for f in self.files.values())

    def write(self, root: Path) -> None:
        (root / MANIFEST).write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def read(cls, root: Path) -> Manifest:
        path = root / MANIFEST
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise BackupError(f"{root} has no {MANIFEST}", "point at a directory `mlcycle backup` wrote") from None
        except json.JSONDecodeError as exc:
            raise BackupError(f"{path} is not valid JSON ({exc})", "the backup is damaged: use another") from None
        if raw.get("format") != FORMAT:
            raise BackupError(
                f"{path} has format {raw.get('format')!r}, this mlcycle reads {FORMAT}",
                "restore with the mlcycle version that wrote it",
            )
        return cls(**raw)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


def _left_out(rel: str) -> str | None:
    for prefix in LEFT_OUT:
        if rel == prefix or rel.startswith(prefix + "/"):
            return prefix
    return None


def _data_files(data: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted(data.rglob("*")):
        if not path.is_file() or path.name.endswith((".part", "-journal", "-wal", "-shm")):
            continue
        yield path.relative_to(data).as_posix(), path


def _project_files(cfg: ProjectConfig, config_name: str) -> Iterator[tuple[str, Path]]:
    """The definitions a project needs besides its data: config, contract, Feast repo."""
    root = cfg.root.resolve()
    wanted = [root / config_name]
    if cfg.table.contract and ":" not in cfg.table.contract:
        wanted.append(cfg.resolve(Path(cfg.table.contract)))
    repo = cfg.feature_repo_path
    if repo.is_dir():
        wanted += [p for p in sorted(repo.rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
    for path in wanted:
        if path.is_file() and path.resolve().is_relative_to(root):
            yield path.resolve().relative_to(root).as_posix(), path


def _copy_sqlite(src: Path, dst: Path) -> None:
    """A consistent copy of a live database (SQLite's online backup API)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(f"{src.as_uri()}?mode=ro", uri=True) as source, sqlite3.connect(dst) as target:
        source.backup(target)
    source.close()
    target.close()


def _move_into(staging: Path, target: Path) -> None:
    """``staging`` becomes ``target`` (absent, or an empty directory) in one rename."""
    if target.exists():
        target.rmdir()
    os.replace(staging, target)


def _empty_or_absent(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """A libpq URL without its password, and the environment that carries the password: pg_dump
    and pg_restore must not show it to ``ps``."""
    parts = urlsplit(url.replace("postgresql+psycopg://", "postgresql://", 1))
    env = {**os.environ}
    if parts.password:
        env["PGPASSWORD"] = unquote(parts.password)
    netloc = parts.hostname or ""
    if parts.username:
        netloc = f"{unquote(parts.username)}@{netloc}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(("postgresql", netloc, parts.path, parts.query, "")), env


def _run_pg(tool: str, args: list[str], url: str) -> None:
    binary = shutil.which(tool)
    if binary is None:
        raise BackupError(f"{tool} not found", "install PostgreSQL's client tools (Debian: postgresql-client)")
    conninfo, env = _libpq(url)
    result = subprocess.run([binary, *args, "--dbname", conninfo], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise BackupError(
            f"{tool} failed: {redact(result.stderr.strip())[-500:]}", "check MLCYCLE_PG_URL and the server"
        )


def dump_database(url: str, path: Path) -> None:
    """``pg_dump`` in its custom format (one consistent snapshot of the whole database)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _run_pg("pg_dump", ["--format=custom", "--no-owner", "--no-privileges", "--file", str(path)], url)


def database_tables(url: str) -> list[str]:
    """The tables in the database's public schema; [] when it has none (created when missing)."""
    forget_ensured()  # a database dropped since this process last looked is created again
    ensure_database(sqlalchemy_url(url))
    engine = sa.create_engine(sqlalchemy_url(url))
    try:
        return sorted(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def sqlalchemy_url(url: str) -> str:
    return url if "+" in url.split("://", 1)[0] else url.replace("postgresql://", "postgresql+psycopg://", 1)


def backup(cfg: ProjectConfig, dest: Path, config_name: str = DEFAULT_CONFIG_NAME, out: Progress = print) -> Manifest:
    """Write a backup of ``cfg``'s project to ``dest`` (absent or empty); nothing is left at ``dest``
    if it fails."""
    dest = Path(dest).resolve()
    data = cfg.data_path
    if not _empty_or_absent(dest):
        raise BackupError(f"{dest} exists and is not empty", "give a new directory (a backup never overwrites one)")
    if dest.is_relative_to(data):
        raise BackupError(f"{dest} is inside the project's data directory", "back up to a directory outside data/")
    if cfg.profile == "local" and not (data / "mlflow.db").exists():
        raise BackupError(f"{data} holds no registry to back up", "train a model first (mlcycle train)")
    started = time.monotonic()
    staging = dest.parent / f".{dest.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    manifest = Manifest(
        format=FORMAT,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        mlcycle_version=metadata.version("mlcycle"),
        project=cfg.project,
        profile=cfg.profile,
        model=cfg.model.name,
        data_root=str(data),
        config_name=config_name,
    )
    try:
        if cfg.profile == "scale":  # the registry, logs and Feast registry: one database, one dump
            out(f"  pg_dump of {cfg.scale.database} …")
            dump_database(cfg.scale.pg_url, staging / POSTGRES / f"{cfg.scale.database}.dump")
            manifest.database = cfg.scale.database
            manifest.left_out.setdefault("redis", "the online store in Redis: `mlcycle features publish --fresh`")
        if (store := ObjectStore.from_env()) is not None:  # the project's objects: artifacts, snapshots
            ensure_object_store(store)
            manifest.object_store = store.uri(cfg.project) + "/"
            out(f"  copying {manifest.object_store} …")
            out(f"  {_download_objects(store, cfg.project, staging / OBJECTS)} objects copied")
        copied = 0
        for rel, path in _data_files(data) if data.exists() else ():
            if (prefix := _left_out(rel)) is not None:
                manifest.left_out.setdefault(prefix, LEFT_OUT[prefix])
                continue
            target = staging / DATA / rel
            if is_sqlite(path):
                _copy_sqlite(path, target)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
            copied += 1
            if copied % 500 == 0:
                out(f"  {copied} files copied …")
        for rel, path in _project_files(cfg, config_name):
            target = staging / PROJECT / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        for path in sorted(staging.rglob("*")):
            if path.is_file():
                manifest.files[path.relative_to(staging).as_posix()] = {
                    "sha256": sha256(path),
                    "bytes": path.stat().st_size,
                }
        manifest.seconds = round(time.monotonic() - started, 2)
        manifest.write(staging)
        _move_into(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


STAMP = "%Y%m%dT%H%M%SZ"  # a scheduled backup's directory name under backup.dest: its UTC time


@dataclass
class ScheduledBackup:
    """One run of the scheduled backup: ``done`` with where it went, or ``not configured`` (nothing
    written, ``message`` says how to turn it on)."""

    status: str  # "done" | "not configured"
    message: str
    path: Path | None = None
    bytes: int = 0
    files: int = 0
    seconds: float = 0.0
    pruned: list[Path] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": None if self.path is None else str(self.path),
                "pruned": [str(p) for p in self.pruned]}  # fmt: skip


def stamp_of(name: str) -> datetime | None:
    """The UTC time a scheduled backup's directory name stands for, or None for any other name."""
    try:
        at = datetime.strptime(name, STAMP).replace(tzinfo=UTC)
    except ValueError:
        return None
    return at if at.strftime(STAMP) == name else None  # only the canonical spelling (zero-padded)


def scheduled_backups(dest: Path, project: str) -> list[Path]:
    """The scheduled backups of ``project`` in ``dest``, oldest first: directories named by a stamp
    that hold a manifest this code wrote for that project. Anything else in ``dest`` is not one."""
    found = []
    for path in Path(dest).iterdir() if Path(dest).is_dir() else ():
        if not path.is_dir() or path.is_symlink() or (at := stamp_of(path.name)) is None:
            continue
        try:
            manifest = Manifest.read(path)
        except (BackupError, TypeError, AttributeError):  # no manifest, not ours, another format
            continue
        if manifest.project == project:
            found.append((at, path))
    return [path for _, path in sorted(found)]


def scheduled_backup(
    cfg: ProjectConfig, now: datetime, config_name: str = DEFAULT_CONFIG_NAME, out: Progress = print
) -> ScheduledBackup:
    """The scheduled deployment's backup: :func:`backup` into ``backup.dest/<now as STAMP>/``, then
    the project's scheduled backups beyond ``backup.keep`` removed, oldest first (never the one just
    written, never anything :func:`scheduled_backups` does not list). ``backup.dest`` not set: nothing
    written, status "not configured"."""
    if cfg.backup.dest is None:
        return ScheduledBackup(
            "not configured",
            "scheduled backup not configured: nothing was backed up. Set backup.dest in mlcycle.yaml "
            "(e.g. `backup: {dest: /backups/" + cfg.project + ", keep: 7}`, outside data/) to turn it on",
        )
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (the stamp is UTC)")
    dest = cfg.resolve(Path(cfg.backup.dest))
    if dest.is_relative_to(cfg.data_path):
        raise BackupError(f"backup.dest {dest} is inside the project's data directory", "set it outside data/")
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / now.astimezone(UTC).strftime(STAMP)
    manifest = backup(cfg, target, config_name, out)
    older = [p for p in scheduled_backups(dest, cfg.project) if p != target]
    pruned = older[: max(0, len(older) - (cfg.backup.keep - 1))]
    for path in pruned:
        out(f"  removing {path.name} (backup.keep is {cfg.backup.keep})")
        shutil.rmtree(path)
    return ScheduledBackup(
        "done",
        f"backed up {cfg.project} to {target}: {len(manifest.files)} files, {manifest.total_bytes} bytes in "
        f"{manifest.seconds:.1f} s; {len(pruned)} older removed, keep {cfg.backup.keep}",
        path=target,
        bytes=manifest.total_bytes,
        files=len(manifest.files),
        seconds=manifest.seconds,
        pruned=pruned,
    )


def _keys(store: ObjectStore, project: str) -> list[str]:
    client: Any = store.client()
    head = store.uri(project).removeprefix(f"s3://{store.bucket}/") + "/"
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=head):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def _download_objects(store: ObjectStore, project: str, target: Path) -> int:
    client: Any = store.client()
    head = store.uri(project).removeprefix(f"s3://{store.bucket}/") + "/"
    keys = _keys(store, project)
    for key in keys:
        path = target / key[len(head) :]
        path.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(store.bucket, key, str(path))
    return len(keys)


def _upload_objects(store: ObjectStore, project: str, source: Path, files: list[str], put: list[str]) -> None:
    """Put the backup's objects under the target store's project prefix, each key appended to
    ``put`` once written (so a failed restore can remove exactly those: ``_delete_objects``)."""
    client: Any = store.client()
    head = store.uri(project).removeprefix(f"s3://{store.bucket}/") + "/"
    for rel in files:
        key = head + rel[len(OBJECTS) + 1 :]
        client.upload_file(str(source / rel), store.bucket, key)
        put.append(key)


def _delete_objects(store: ObjectStore, keys: list[str]) -> None:
    client: Any = store.client()
    for start in range(0, len(keys), 1000):
        client.delete_objects(Bucket=store.bucket, Delete={"Objects": [{"Key": k} for k in keys[start : start + 1000]]})


def verify(src: Path) -> Manifest:
    """The manifest, once every file it lists is there with its hash (and no file it does not list)."""
    src = Path(src).resolve()
    manifest = Manifest.read(src)
    present = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()} - {MANIFEST}
    if missing := sorted(set(manifest.files) - present):
        raise BackupError(
            f"{len(missing)} files of the manifest are missing, first {missing[0]}",
            "the backup is damaged: use another",
        )
    if extra := sorted(present - set(manifest.files)):
        raise BackupError(
            f"{len(extra)} files are not in the manifest, first {extra[0]}", "the backup was changed: use another"
        )
    for rel, expected in sorted(manifest.files.items()):
        if sha256(src / rel) != expected["sha256"]:
            raise BackupError(f"{rel} does not match the manifest's sha256", "the backup is damaged: use another")
    return manifest


def _relocate(url: str, old: str, new: str) -> int:
    """Point MLflow's absolute locations (``url``: its SQLite file or PostgreSQL database) from the
    old data directory to the new one."""
    return _replace_locations(url, [(Path(old).as_uri() + "/", Path(new).as_uri() + "/"), (old + "/", new + "/")])


def _relocate_uri(url: str, old: str, new: str) -> int:
    """The same for object-store locations (``s3://bucket/prefix/project/``, both ending in /)."""
    return _replace_locations(url, [(old, new)])


def _replace_locations(url: str, pairs: list[tuple[str, str]]) -> int:
    changed = 0
    engine = sa.create_engine(url)
    find = "instr({c}, :before) > 0" if engine.dialect.name == "sqlite" else "strpos({c}, :before) > 0"
    try:
        with engine.begin() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            for table, columns in LOCATIONS.items():
                for column in columns if table in tables else ():
                    for before, after in pairs:
                        where = find.format(c=column)
                        query = sa.text(
                            f"UPDATE {table} SET {column} = replace({column}, :before, :after) WHERE {where}"
                        )
                        changed += conn.execute(query, {"before": before, "after": after}).rowcount
    finally:
        engine.dispose()
    return changed


def restore(src: Path, root: Path, out: Progress = print) -> tuple[Manifest, ProjectConfig]:
    """Bring the project in ``src`` back at ``root``: the manifest checked first, then ``data/``
    written beside the project and moved into place in one rename. Refused, with nothing written,
    over a project with state, or over a project file that differs from the backup's."""
    root = Path(root).resolve()
    started = time.monotonic()
    manifest = verify(src)
    src = Path(src).resolve()
    data = root / DATA
    if not _empty_or_absent(data):
        raise BackupError(
            f"{data} is not empty: a restore never writes over a project's state",
            f"stop the project (mlcycle down) and move {data} aside, or restore into an empty directory",
        )
    project = {rel[len(PROJECT) + 1 :]: rel for rel in manifest.files if rel.startswith(PROJECT + "/")}
    differs = [
        p for p, rel in project.items() if (root / p).exists() and sha256(root / p) != manifest.files[rel]["sha256"]
    ]
    if differs:
        raise BackupError(
            f"{root / differs[0]} differs from the backup's copy ({len(differs)} project files differ)",
            "move the project's own files aside, or restore into an empty directory",
        )
    dump = next((rel for rel in manifest.files if rel.startswith(POSTGRES + "/")), None)
    if manifest.profile == "scale" and dump is not None:
        pg_target = ScaleSettings.from_env()
        if tables := database_tables(pg_target.pg_url):
            raise BackupError(
                f"database {pg_target.database} has {len(tables)} tables ({', '.join(tables[:3])}, …): a restore never "
                "writes over a project's state",
                "point MLCYCLE_PG_URL at an empty database (it is created when missing)",
            )
    objects = sorted(rel for rel in manifest.files if rel.startswith(OBJECTS + "/"))
    store = ObjectStore.from_env()
    if objects:
        if store is None:
            raise BackupError(
                f"the backup holds {len(objects)} objects of {manifest.object_store}, and no object store is set",
                "export MLCYCLE_S3_ENDPOINT, MLCYCLE_S3_BUCKET and the store's keys (AWS_*) to restore them",
            )
        ensure_object_store(store)
        if existing := _keys(store, manifest.project):
            raise BackupError(
                f"{store.uri(manifest.project)}/ already holds {len(existing)} objects: a restore never writes over "
                "a project's state",
                "point MLCYCLE_S3_BUCKET / MLCYCLE_S3_PREFIX at an empty place, or move those objects aside",
            )
    staging = root / f".data.restoring-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    put: list[str] = []  # objects written into the store: removed again if the restore fails
    try:
        staging.mkdir(parents=True)
        for rel in manifest.files:
            if rel.startswith(DATA + "/"):
                target = staging / rel[len(DATA) + 1 :]
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / rel, target)
        registry_url = None
        if manifest.profile == "scale" and dump is not None:
            out(f"  pg_restore into {pg_target.database} …")  # one transaction: all or nothing
            _run_pg("pg_restore", ["--no-owner", "--no-privileges", "--single-transaction", "--exit-on-error",
                                   str(src / dump)], pg_target.pg_url)  # fmt: skip
            registry_url = sqlalchemy_url(pg_target.pg_url)
        elif (staging / "mlflow.db").exists():
            registry_url = f"sqlite:///{staging / 'mlflow.db'}"
        if manifest.data_root != str(data) and registry_url is not None:
            moved = _relocate(registry_url, manifest.data_root, str(data))
            out(f"  {moved} MLflow locations moved from {manifest.data_root} to {data}")
        if objects and store is not None:
            target = store.uri(manifest.project) + "/"
            out(f"  putting {len(objects)} objects into {target} …")
            _upload_objects(store, manifest.project, src, objects, put)
            if manifest.object_store and manifest.object_store != target and registry_url is not None:
                moved = _relocate_uri(registry_url, manifest.object_store, target)
                out(f"  {moved} MLflow locations moved from {manifest.object_store} to {target}")
        _move_into(staging, data)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if put and store is not None:  # nothing half-restored: the bucket as the restore found it
            _delete_objects(store, put)
        raise
    for path, rel in project.items():  # only those missing: the others were checked equal
        if not (root / path).exists():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, root / path)
    manifest.seconds = round(time.monotonic() - started, 2)
    return manifest, load_config(root / manifest.config_name)
