"""A project's bulk files in object storage, so that hosts share servers, not a disk.

With the environment's object store (``settings.ObjectStore``: ``MLCYCLE_S3_ENDPOINT``,
``MLCYCLE_S3_BUCKET``, the ``AWS_*`` keys), a file the project writes under its root is also put
at ``s3://bucket/prefix/<project>/files/<path under the root>`` (:func:`publish`), and a host that
reads the file gets it from there when it is not its own (:func:`fetch`). The rule that keeps the
copies honest: a file written on this host is the source (it is read as it is and published); a
file fetched from the store is a cache, marked by a ``.<name>.etag`` beside it, and is fetched
again when the object's ETag has changed. Without an object store both functions do nothing and
every file stays on the local disk, as before.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mlcycle.settings import ObjectStore, ObjectStoreError, ensure_object_store

FILES = "files"


def _store() -> ObjectStore | None:
    store = ObjectStore.from_env()
    if store is not None:
        ensure_object_store(store)
    return store


def key_of(store: ObjectStore, project: str, root: Path, path: Path) -> str:
    """The object key of ``path`` (under ``root``) in ``store``, for project ``project``."""
    try:  # by the paths as written: a data/ that is a symlink to another disk is still the project's
        relative = Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
    except ValueError:
        raise ObjectStoreError(f"{path} is outside the project at {root}: only project files go to the store") from None
    return store.uri(project, FILES, relative.as_posix()).split("/", 3)[3]


def _inside(root: Path, path: Path) -> bool:
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(root))


def _marker(path: Path) -> Path:
    return path.with_name(f".{path.name}.etag")


def publish(project: str, root: Path, path: Path) -> str | None:
    """Put the file written here at its key; its URI, or None without an object store or for a file
    outside the project (a table kept elsewhere is its owner's to share)."""
    store = _store() if _inside(root, path) else None
    if store is None:
        return None
    key = key_of(store, project, root, path)
    store.client().upload_file(str(path), store.bucket, key)  # type: ignore[attr-defined]
    _marker(Path(path)).unlink(missing_ok=True)  # written here: the source, not a cache
    return f"s3://{store.bucket}/{key}"


def fetch(project: str, root: Path, path: Path) -> Path:
    """``path``, brought from the store when this host did not write it: absent, or a cache whose
    object has changed since (a cache whose object is gone is removed). A file written here is
    returned as it is; without an object store, or without the object, ``path`` is returned as it
    is (its reader says what is missing). Processes of one host refresh a file one at a time."""
    import fcntl

    path = Path(path)
    marker = _marker(path)
    if (path.exists() and not marker.exists()) or not _inside(root, path):
        return path
    store = _store()
    if store is None:
        return path
    from botocore.exceptions import ClientError

    client: Any = store.client()
    key = key_of(store, project, root, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            etag = str(client.head_object(Bucket=store.bucket, Key=key)["ETag"])
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) not in ("404", "NoSuchKey", "NotFound"):
                raise
            if marker.exists():  # the object was deleted: so is its cache
                path.unlink(missing_ok=True)
                marker.unlink(missing_ok=True)
            return path
        if path.exists() and marker.exists() and marker.read_text() == etag:
            return path
        partial = path.with_name(f".{path.name}.{os.getpid()}.part")
        client.download_file(store.bucket, key, str(partial))
        marker.write_text(etag)  # under the lock: the file and its ETag change together
        partial.replace(path)
    return path


def project_of(path: Path) -> tuple[Path, str] | None:
    """The project a file belongs to: the nearest directory above it holding the project's config,
    and the project's name in it (``project:``). None outside any project."""
    import yaml

    from mlcycle.project.config import DEFAULT_CONFIG_NAME

    for parent in Path(path).resolve().parents:
        config = parent / DEFAULT_CONFIG_NAME
        if config.is_file():
            raw = yaml.safe_load(config.read_text()) or {}
            return parent, str(raw.get("project", "mlcycle"))
    return None


def readable_uri(path: str | Path) -> str:
    """Where a reader that opens URIs itself (DuckDB's ``read_parquet``) finds a project file: the
    local path when this host has it, else its ``s3://`` URI when an object store is configured (the
    file another host published), else the local path (whose absence its reader reports)."""
    local = Path(path)
    if "://" in str(path):
        return str(path)
    if local.exists():
        if _marker(local).exists():  # a cache: refreshed if the object changed, removed if it is gone
            found = project_of(local)
            if found is not None:
                fetch(found[1], found[0], local)
        if local.exists():
            return str(path)
    store = ObjectStore.from_env()
    found = project_of(local) if store is not None else None
    if store is None or found is None:
        return str(path)
    root, project = found
    return f"s3://{store.bucket}/{key_of(store, project, root, local)}"


def published_under(project: str, root: Path, directory: Path) -> list[Path]:
    """The local paths of the objects published under ``directory`` (a project directory), whether or
    not this host has them; empty without an object store."""
    store = _store() if _inside(root, directory) else None
    if store is None:
        return []
    head = key_of(store, project, root, directory).rstrip("/") + "/"
    base = store.uri(project, FILES).split("/", 3)[3] + "/"  # the key of the project's root
    client: Any = store.client()
    paths = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=head):
        paths += [Path(root) / str(item["Key"])[len(base) :] for item in page.get("Contents", [])]
    return sorted(paths)


def remove(project: str, root: Path, path: Path) -> None:
    """Delete a project file's object (a file removed here must not live on in the store)."""
    store = _store()
    if store is not None:
        client: Any = store.client()
        client.delete_object(Bucket=store.bucket, Key=key_of(store, project, root, path))
    _marker(Path(path)).unlink(missing_ok=True)
