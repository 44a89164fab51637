"""The golden set: a frozen table every candidate is judged on, pinned by the sha256 of its file.

A golden set that changed under its pin is refused (``GoldenSetChanged``), naming the rule and the
fix: judging a candidate on rows that moved would compare it with nothing. Re-pinning is a
deliberate change of ``evaluation.golden_set.sha256`` in mlcycle.yaml (``mlcycle ci golden``),
which a reviewer sees in the diff.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

RULE = "evaluation.golden_set.sha256"
REPIN = "mlcycle ci golden --repin"


class GoldenSetError(ValueError):
    """The golden set cannot be used: missing, or changed under its pin."""


class GoldenSetChanged(GoldenSetError):
    """The file's sha256 is not the pinned one."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_pin(path: Path, pinned: str) -> str:
    """The file's sha256 when it is the pinned one; else ``GoldenSetChanged`` (or ``GoldenSetError``
    for a missing file) naming the rule and the fix."""
    path = Path(path)
    if not path.is_file():
        raise GoldenSetError(
            f"golden set {path} does not exist ({RULE} pins it): restore it from version control, or make and pin "
            f"a new one deliberately with `{REPIN}`"
        )
    actual = file_sha256(path)
    if actual != pinned:
        raise GoldenSetChanged(
            f"golden set {path} changed: sha256 {actual[:12]}… is not the pinned {pinned[:12]}… (rule {RULE}: a "
            f"golden set is frozen, so candidates are judged on the same rows). Restore the file, or re-pin it "
            f"deliberately with `{REPIN}` and commit the new pin for review."
        )
    return actual
