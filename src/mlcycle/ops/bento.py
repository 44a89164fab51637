"""``mlcycle build``: a project's scoring service as a Bento in the BentoML store.

What a Bento carries: the project's service entrypoint (its own ``services/service.py`` or
mlcycle's generic ``mlcycle.service:ScoringService``), its config, data contract, Feast
definitions and the Python modules its config names (contract, transformations); the mlcycle
wheel; and the requirements pinned to the environment the build runs in, so the Bento installs
the versions that were tested, with no resolution. What it does not carry: data. The model is
the registry's champion and the features are the online store's, read when the service starts,
so the Bento is served where they are (``serve_hint``):

- profile ``local`` keeps the registry and the online store as files under the project's
  ``data/`` (and MLflow records each model's artifact path on this machine): the served Bento is
  pointed at the project by ``MLCYCLE_CONFIG=<project>/mlcycle.yaml``, exactly as ``mlcycle
  serve`` points its own process, and so reads the same registry and online store;
- profile ``scale`` reads both from servers the environment names (``MLCYCLE_REDIS_URL``,
  ``MLCYCLE_PG_URL``): the Bento's own copy of the config serves as is.

The wheel: ``--wheel PATH`` when given; otherwise the running mlcycle is packed into one
(``pack_wheel``) — its package directory as imported, with the installed distribution's metadata —
which works the same for an editable source checkout and for an installed wheel, needs no build
backend, and is byte-for-byte reproducible for the same files.

A build checks first — a project directory, a champion in the registry — and writes nothing when
a check fails; the build inputs go to ``data/bento/`` (kept, so ``bentoml build`` works by hand
after one ``mlcycle build``) and are removed again if the build fails.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.metadata
import os
import re
import shutil
import time
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from mlcycle.project.bentofile import (  # noqa: F401  (bento.X: the build's own vocabulary)
    BENTOFILE,
    DIST,
    STAGING,
    BuildError,
    bento_name,
    bentofile_yaml,
    include_patterns,
    project_relative,
    service_target,
    wheel_filename,
)
from mlcycle.project.config import DEFAULT_CONFIG_NAME, ProjectConfig, load_config

REQUIREMENTS = "requirements.txt"
# Fixed zip timestamps: the same files make the same wheel (zip cannot store dates before 1980).
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


class NotAProject(BuildError):
    """The directory holds no mlcycle project (no ``mlcycle.yaml``, or no Feast repo beside it)."""


class NoChampion(BuildError):
    """The registry has no champion to serve: train one first."""


class WheelError(BuildError):
    """The mlcycle wheel to put in the Bento is missing or is not mlcycle's."""


# ----------------------------------------------------------------------------- the project
def project_config(path: Path | str | None = None) -> ProjectConfig:
    """The project at ``path`` (a directory or its ``mlcycle.yaml``; default: the current
    directory), or ``NotAProject`` naming the fix. ``load_config`` alone would give the defaults
    for a directory without a config: right for commands that make a project, not for one that
    packages it. An invalid config raises ``ConfigError`` as everywhere."""
    target = Path(path) if path is not None else Path.cwd()
    config = target / DEFAULT_CONFIG_NAME if target.is_dir() or not target.suffix else target
    if not config.is_file():
        raise NotAProject(
            f"{config.parent.resolve()} is not an mlcycle project: it has no {config.name}. Run `mlcycle build` "
            f"in a project directory (or pass --config path/to/{DEFAULT_CONFIG_NAME}); `mlcycle init` makes one."
        )
    cfg = load_config(config)
    store_yaml = cfg.feature_repo_path / "feature_store.yaml"
    if not store_yaml.is_file():
        raise NotAProject(
            f"{cfg.root} has no Feast repo: {store_yaml} does not exist (features.feature_repo in "
            f"{config.name}); a Bento serves the project's feature definitions. `mlcycle init` writes one."
        )
    return cfg


# ----------------------------------------------------------------------------- the registry
def champion_version(cfg: ProjectConfig) -> str:
    """The registry's champion version, or ``NoChampion`` naming the fix. Reads only: a project
    without a registry yet gets no empty one created by a build."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from mlcycle.registry.aliases import CHAMPION

    fix = f"train one first: `mlcycle train` in {cfg.root} (a model that passes the gates becomes the champion)"
    uri = cfg.tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise NoChampion(f"no champion to serve: the registry {uri} does not exist yet; {fix}")
    try:
        version = MlflowClient(uri, uri).get_model_version_by_alias(cfg.model.name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise NoChampion(
                f"no champion to serve: model '{cfg.model.name}' has no '{CHAMPION}' alias; {fix}"
            ) from None
        raise BuildError(f"cannot read the registry {uri}: {exc.message}") from None
    return str(version.version)


# ----------------------------------------------------------------------------- the wheel
def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _package_files(dist: importlib.metadata.Distribution) -> Iterator[tuple[str, bytes]]:
    """The files of the imported mlcycle package, as wheel entries (``mlcycle/…``): what runs
    here, whether installed from a wheel or editable from a checkout. Byte code is left out."""
    import mlcycle

    package = Path(mlcycle.__file__).resolve().parent
    for path in sorted(package.rglob("*")):
        rel = path.relative_to(package)
        if not path.is_file() or "__pycache__" in rel.parts or path.suffix in (".pyc", ".pyo"):
            continue
        if any(part.startswith(".") for part in rel.parts):
            continue
        yield f"{package.name}/{rel.as_posix()}", path.read_bytes()


def pack_wheel(out_dir: Path) -> Path:
    """The running mlcycle as a wheel in ``out_dir``: the package directory it imports from,
    with the installed distribution's ``METADATA`` and ``entry_points.txt`` (so the wheel
    declares the same dependencies and the ``mlcycle`` command), a fresh ``RECORD``."""
    try:
        dist = importlib.metadata.distribution(DIST)
    except importlib.metadata.PackageNotFoundError:
        raise WheelError(
            "mlcycle is importable but not installed as a distribution (no mlcycle-*.dist-info): "
            "install it (pip install mlcycle, or uv sync in a checkout) or pass --wheel PATH"
        ) from None
    metadata = dist.read_text("METADATA")
    if not metadata:
        raise WheelError("the installed mlcycle has no METADATA: reinstall it, or pass --wheel PATH")
    info = f"{DIST}-{dist.version}.dist-info"
    entries = list(_package_files(dist))
    if not any(name == f"{DIST}/service.py" for name, _ in entries):
        raise WheelError("the imported mlcycle package has no service.py: reinstall it, or pass --wheel PATH")
    entries.append((f"{info}/METADATA", metadata.encode()))
    if entry_points := dist.read_text("entry_points.txt"):
        entries.append((f"{info}/entry_points.txt", entry_points.encode()))
    for file in dist.files or []:  # license files the distribution ships
        if file.parts[0] == info and len(file.parts) > 1 and file.parts[1] == "licenses":
            entries.append((file.as_posix(), Path(dist.locate_file(file)).read_bytes()))
    wheel_meta = "Wheel-Version: 1.0\nGenerator: mlcycle.ops.bento\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    entries.append((f"{info}/WHEEL", wheel_meta.encode()))
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in entries) + f"{info}/RECORD,,\n"
    entries.append((f"{info}/RECORD", record.encode()))

    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / wheel_filename(dist.version)
    partial = target.with_suffix(".part")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            entry = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(entry, data)
    partial.replace(target)
    return target


def given_wheel(path: Path, out_dir: Path) -> Path:
    """``--wheel PATH``, checked to be an mlcycle wheel, copied into ``out_dir``."""
    path = Path(path)
    if not path.is_file():
        raise WheelError(f"--wheel {path}: no such file")
    if not re.fullmatch(rf"{DIST}-[^-]+-.+\.whl", path.name) or not zipfile.is_zipfile(path):
        raise WheelError(f"--wheel {path}: not an mlcycle wheel (expected {DIST}-<version>-<tags>.whl)")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / path.name
    if path.resolve() != target.resolve():
        shutil.copy2(path, target)
    return target


# ----------------------------------------------------------------------------- requirements
def pinned_requirements(dist_name: str = DIST) -> list[str]:
    """Every distribution ``dist_name`` needs here, recursively (markers evaluated, extras
    followed), as ``name==version`` of what is installed: the Bento reinstalls this environment."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    todo: list[tuple[str, str]] = [(dist_name, "")]  # (distribution, extra it is needed with)
    while todo:
        name, extra = todo.pop()
        if (canonicalize_name(name), extra) in seen:
            continue
        seen.add((canonicalize_name(name), extra))
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise BuildError(f"{name} is required but not installed here: repair the environment (uv sync)") from None
        if canonicalize_name(name) != canonicalize_name(dist_name):
            pins[canonicalize_name(dist.metadata["Name"])] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": extra}):
                continue
            todo.append((req.name, ""))
            todo.extend((req.name, e) for e in req.extras)
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


# ----------------------------------------------------------------------------- the build
@dataclass
class BuiltBento:
    tag: str
    path: Path
    champion: str
    wheel: Path
    requirements: int
    seconds: float
    serve: str

    @property
    def dockerfile(self) -> Path:
        return self.path / "env" / "docker" / "Dockerfile"


def serve_hint(cfg: ProjectConfig, tag: str) -> str:
    """How to serve the Bento so that it reaches this project's registry and online store."""
    if cfg.profile == "scale":
        return (
            f"MLCYCLE_PROFILE=scale MLCYCLE_REDIS_URL=… MLCYCLE_PG_URL=… bentoml serve {tag} --host 127.0.0.1"
            "    # profile scale: the Bento's own config, its servers named by the environment"
        )
    return (
        f"MLCYCLE_CONFIG={cfg.root / DEFAULT_CONFIG_NAME} bentoml serve {tag} --host 127.0.0.1"
        f"    # profile local: the registry and online store are files under {cfg.data_path}"
    )


def _effective_bentofile(cfg: ProjectConfig, wheel: Path, staging: Path) -> Path:
    """The bentofile to build: the project's own ``bentofile.yaml`` (its mlcycle wheel and
    requirements entries pointed at this build's), else the template's; written to ``staging``."""
    own = cfg.root / BENTOFILE
    wheel_rel = project_relative(cfg, wheel, "the wheel")
    requirements_rel = f"{STAGING}/{REQUIREMENTS}"
    if own.is_file():
        raw = yaml.safe_load(own.read_text()) or {}
        if not isinstance(raw, dict) or not raw.get("service"):
            raise BuildError(f"{own}: expected a bentofile with a `service:` (delete it to use mlcycle's)")
        python = dict(raw.get("python") or {})
        others = [w for w in python.get("wheels") or [] if not re.fullmatch(rf"(.*/)?{DIST}-[^/]*\.whl", str(w))]
        python["wheels"] = [wheel_rel, *others]
        python["requirements_txt"] = requirements_rel
        python.pop("packages", None)
        python.setdefault("lock_packages", False)
        raw["python"] = python
        text = f"# {own} as `mlcycle build` built it (the mlcycle wheel and pins of this build)\n"
        text += yaml.safe_dump(raw, sort_keys=False)
    else:
        text = bentofile_yaml(cfg, wheel=wheel.name)
    target = staging / BENTOFILE
    target.write_text(text)
    return target


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def build(cfg: ProjectConfig, wheel: Path | None = None) -> BuiltBento:
    """Check the project and its champion, stage the wheel and the pinned requirements under
    ``data/bento/``, and build the Bento into the BentoML store (``$BENTOML_HOME``)."""
    started = time.perf_counter()
    champion = champion_version(cfg)
    staging = cfg.root / STAGING
    existed = staging.exists()
    try:
        staging.mkdir(parents=True, exist_ok=True)
        for old in staging.glob(f"{DIST}-*.whl"):
            old.unlink()
        staged = given_wheel(wheel, staging) if wheel is not None else pack_wheel(staging)
        pins = pinned_requirements()
        header = "# mlcycle's requirements, pinned to the environment `mlcycle build` ran in\n"
        (staging / REQUIREMENTS).write_text(header + "\n".join(pins) + "\n")
        bentofile = _effective_bentofile(cfg, staged, staging)

        import bentoml

        cwd = os.getcwd()
        # BentoML imports the service to check it: the generic one reads MLCYCLE_CONFIG. It reads
        # the wheel and the requirements only from under the current directory: the project's.
        with _environ(MLCYCLE_CONFIG=str(cfg.root / DEFAULT_CONFIG_NAME)), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the stack's, at import: not news here
            try:
                os.chdir(cfg.root)
                bento = bentoml.bentos.build_bentofile(str(bentofile), build_ctx=str(cfg.root))
            except Exception as exc:
                raise BuildError(f"bentoml build failed: {type(exc).__name__}: {exc}") from exc
            finally:
                os.chdir(cwd)
    except BaseException:
        if existed:
            for name in (BENTOFILE, REQUIREMENTS):
                (staging / name).unlink(missing_ok=True)
            for whl in staging.glob(f"{DIST}-*.whl"):
                whl.unlink()
        else:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    tag = str(bento.tag)
    return BuiltBento(
        tag=tag,
        path=Path(bento.path),
        champion=champion,
        wheel=staged,
        requirements=len(pins),
        seconds=time.perf_counter() - started,
        serve=serve_hint(cfg, tag),
    )
