"""Per-principal tokens for the service's admin API: each operator holds a token of their own, so
the promotion log names who changed the traffic or rolled back, and one person's token is revoked
without changing everyone's.

The service keeps only SHA-256 digests of the tokens (a file, one ``<principal> sha256:<hex>`` per
line), so a copy of the file lets nobody in; a token is shown once, when issued. The file is re-read
on every admin call: a revocation holds from the next request, with no restart. ``MLCYCLE_ADMIN_TOKEN``
(one token from the environment) still works and acts as the principal ``service:admin-token``,
which roles treat like any other: a project that declares roles must name it to let it act.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

ENV_FILE = "MLCYCLE_ADMIN_TOKENS_FILE"  # where the service reads the digests (default: under data/)
ENV_SHARED = "MLCYCLE_ADMIN_TOKEN"
SHARED_PRINCIPAL = "service:admin-token"
DEFAULT_FILE = Path("secrets") / "admin_tokens"  # under the project's data directory
PRINCIPAL = re.compile(r"^[A-Za-z0-9_.@:+-]{1,128}$")


class TokenError(ValueError):
    """A principal name the file cannot hold, or a revocation of a principal without a token."""


def digest(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def tokens_file(data_path: Path) -> Path:
    return Path(os.environ.get(ENV_FILE) or data_path / DEFAULT_FILE)


def read(path: Path) -> dict[str, str]:
    """Principal → digest; a missing file holds none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and not line.lstrip().startswith("#") and parts[1].startswith("sha256:"):
            out[parts[0]] = parts[1]
    return out


def _write(path: Path, entries: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    body = "# principal digest (mlcycle token issue|revoke; the tokens themselves are not kept)\n"
    body += "".join(f"{name} {value}\n" for name, value in sorted(entries.items()))
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(body)
    os.replace(partial, path)


def issue(path: Path, principal: str) -> str:
    """A new token for ``principal`` (replacing any it had); returned once, only its digest kept."""
    if not PRINCIPAL.fullmatch(principal):
        raise TokenError(f"{principal!r} is not a principal name: letters, digits and _.@:+- only, up to 128")
    token = secrets.token_urlsafe(32)
    _write(path, {**read(path), principal: digest(token)})
    return token


def revoke(path: Path, principal: str) -> None:
    entries = read(path)
    if principal not in entries:
        raise TokenError(f"{principal} holds no admin token in {path}")
    del entries[principal]
    _write(path, entries)


def principal_for(presented: str, path: Path) -> str | None:
    """Who ``presented`` belongs to: a token from the file, else the shared environment token, else
    None. Every digest is compared, in constant time, so the answer's timing says nothing of which."""
    if not presented:
        return None
    given = digest(presented)
    found = None
    for name, value in read(path).items():
        if hmac.compare_digest(given, value):
            found = name
    shared = os.environ.get(ENV_SHARED)
    if shared and hmac.compare_digest(given, digest(shared)) and found is None:
        found = SHARED_PRINCIPAL
    return found


def configured(path: Path) -> bool:
    """Whether any admin token exists: without one the admin API is off."""
    return bool(os.environ.get(ENV_SHARED)) or bool(read(path))
