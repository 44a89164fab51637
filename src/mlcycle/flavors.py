"""Model flavors: one small interface to fit, score, log and load a model, whatever library made it.

The lifecycle (train → register → serve → batch-score → reproduce → monitor) needs five things of a
model and nothing more: fit it on a training and a validation slice, score a float matrix (the
probability of the positive class for binary classification, the value for regression), log it to
MLflow, and load it back from the registry by alias. Each library does these its own way; a
``Flavor`` hides the difference, so the stages never branch on the library.

Models are logged and loaded with MLflow's own flavors (``mlflow.xgboost``, ``mlflow.sklearn``), so
a registered model is an ordinary MLflow model any MLflow tool can read.

Safety — what a model file may make this process do:

- **Loading is by registry URI only** (``models:/name@alias`` or ``models:/name/version``). No
  model is ever loaded from a file path, and no path a request, an event or a config names is
  ever unpickled: a registry URI points at what training registered, nothing else.
- scikit-learn models are saved with skops, never pickle. MLflow 3 refuses to load them unless
  ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` is set process-wide, because skops trusts the type list
  written *in the model file itself*. This module neither sets that flag nor reads that list: it
  asks skops which types the file would construct and loads it only if every one is under the
  flavor's allowlist of module prefixes; a model saved as pickle is refused outright.
- A scikit-learn estimator named by a dotted path in config is imported only if its path starts
  with an allowed module prefix (default ``sklearn.``), and only if it is an estimator class: config
  text never becomes an arbitrary import.

A leaf at the bottom of the layers (docs/architecture.md), not a part of ``training``: the project
config checks a model spec with it when it is loaded, and training, the registry and serving all
fit, log or load models through it. It imports nothing of mlcycle.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import tempfile
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

Task = Literal["classification", "regression"]
TASKS: tuple[Task, ...] = ("classification", "regression")

FLAVOR_TAG = "mlcycle.flavor"
"""Suggested model-version tag naming the flavor; ``flavor_of`` also reads it from the MLmodel file."""

DEFAULT_ALLOWED_PREFIXES: tuple[str, ...] = ("sklearn.",)
# Types a skops file may construct beyond the estimator's own: numpy's dtype (fitted imputers and
# encoders keep one). Exact names, not a ``numpy.`` prefix: numpy also holds functions such as
# ``numpy.load`` that a crafted file could ask for.
SKOPS_EXTRA_TRUSTED: frozenset[str] = frozenset({"numpy.dtype"})

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
_REGISTRY_URI = re.compile(r"^models:/[^/@]+(@[A-Za-z0-9_\-]+|/\d+)$")


# ------------------------------------------------------------------------------------------ errors


class FlavorError(ValueError):
    """Base of every flavor error: a config or a model the lifecycle cannot use, with the reason."""


class UnknownFlavorError(FlavorError):
    def __init__(self, name: str, known: Sequence[str]):
        self.name, self.known = name, tuple(known)
        super().__init__(f"unknown model flavor {name!r}: known flavors are {', '.join(self.known)}")


class FlavorNotInstalledError(FlavorError):
    def __init__(self, name: str, package: str, extra: str):
        self.name, self.package, self.extra = name, package, extra
        super().__init__(
            f"model flavor {name!r} needs the {package!r} package, which is not installed: "
            f"install the {extra} extra (pip install 'mlcycle[{extra}]')"
        )


class EstimatorNotAllowedError(FlavorError):
    def __init__(self, path: str, allowed: Sequence[str]):
        self.path, self.allowed = path, tuple(allowed)
        super().__init__(
            f"estimator {path!r} is outside the allowed module prefixes ({', '.join(self.allowed)}): "
            "add its package's prefix to the flavor's allowlist if it is trusted"
        )


class EstimatorNotFoundError(FlavorError):
    def __init__(self, path: str, reason: str):
        self.path = path
        super().__init__(f"estimator {path!r} not found: {reason}")


class MissingPredictProbaError(FlavorError):
    def __init__(self, path: str):
        self.path = path
        super().__init__(
            f"classifier {path!r} has no predict_proba with these parameters: the lifecycle scores "
            "probabilities (thresholds, ROC-AUC, calibration); choose a probabilistic classifier "
            "(e.g. probability=True for SVC) or wrap it in sklearn.calibration.CalibratedClassifierCV"
        )


class TaskMismatchError(FlavorError):
    def __init__(self, what: str, task: str, detail: str):
        super().__init__(f"{what} does not fit task {task!r}: {detail}")


class NotARegistryUriError(FlavorError):
    def __init__(self, uri: str):
        self.uri = uri
        super().__init__(
            f"refusing to load a model from {uri!r}: models load from the registry only "
            "('models:/NAME@ALIAS' or 'models:/NAME/VERSION'), never from a path"
        )


class UntrustedModelError(FlavorError):
    def __init__(self, uri: str, detail: str):
        self.uri = uri
        super().__init__(f"refusing to load {uri}: {detail}")


# ------------------------------------------------------------------------------------- interface


@dataclass
class Fitted:
    """A fitted model and what the run should record about how it was made."""

    model: Any
    flavor: str
    task: Task
    params: dict[str, Any]  # effective parameters, defaults included: what reproduce needs
    best_iteration: int | None = None  # early-stopped flavors only
    history: dict[str, list[float]] = field(default_factory=dict)  # validation metric per round


class Flavor(ABC):
    """Fit, score, log and load one library's models. Instances are cheap and hold only options."""

    name: ClassVar[str]
    mlflow_flavor: ClassVar[str]  # the flavor's key in an MLmodel file

    def validate(self, params: dict[str, Any], task: Task) -> None:
        """Check a config's parameters for ``task`` without fitting (for config load): raise a
        ``FlavorError`` now rather than after the data is built."""
        _check_task(task)

    @abstractmethod
    def fit(
        self,
        train_X: np.ndarray,
        train_y: np.ndarray,
        valid_X: np.ndarray,
        valid_y: np.ndarray,
        params: dict[str, Any],
        seed: int,
        task: Task,
        feature_names: Sequence[str] | None = None,
    ) -> Fitted:
        """Fit on the training slice; the validation slice is for early stopping where the library
        has it. Deterministic for the same inputs and seed (``reproduce`` relies on it)."""

    @abstractmethod
    def predict(self, model: Any, X: np.ndarray) -> np.ndarray:
        """1-D float scores: P(positive class) for classification, the value for regression."""

    @abstractmethod
    def _log(self, model: Any, name: str, signature: Any, input_example: Any, pip_requirements: list[str]) -> ModelInfo:
        """Log with MLflow's own flavor into the active run; return what MLflow says it logged."""

    @abstractmethod
    def load(self, model_uri: str) -> Any:
        """Load a model from the registry (``models:/NAME@ALIAS``); never from a path."""

    def log(
        self,
        model: Any,
        name: str = "model",
        *,
        input_example: pd.DataFrame | np.ndarray,
        pip_requirements: list[str],
        signature: Any | None = None,
    ) -> ModelInfo:
        """Log ``model`` into the active MLflow run; return MLflow's record of it (register its
        ``model_uri``; link the run's metrics to its ``model_id``).

        ``pip_requirements`` is required: MLflow's inference of them re-imports everything in a
        subprocess for minutes. Without ``signature``, one is inferred from ``input_example`` and
        this flavor's own scores, so the signature describes what ``predict`` returns."""
        if signature is None:
            from mlflow.models import infer_signature

            X = input_example.to_numpy(dtype=np.float32) if isinstance(input_example, pd.DataFrame) else input_example
            signature = infer_signature(input_example, self.predict(model, np.asarray(X, dtype=np.float32)))
        return self._log(model, name, signature, input_example, list(pip_requirements))


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise FlavorError(f"unknown task {task!r}: known tasks are {', '.join(TASKS)}")


def _check_binary(y: np.ndarray, where: str) -> None:
    """Binary classification scores P(label == 1): the labels must be 0 and 1, both present."""
    values = set(np.unique(y).tolist())
    if values != {0, 1}:
        raise FlavorError(f"binary classification needs labels 0 and 1 in the {where} slice, found {sorted(values)}")


def registry_uri(model_uri: str) -> str:
    """``model_uri`` if it names a registered model (by alias or version); else a typed refusal."""
    if not isinstance(model_uri, str) or not _REGISTRY_URI.match(model_uri):
        raise NotARegistryUriError(str(model_uri))
    return model_uri


def alias_uri(model_name: str, alias: str) -> str:
    """The URI stages load a model by: ``models:/NAME@ALIAS``."""
    return registry_uri(f"models:/{model_name}@{alias}")


# --------------------------------------------------------------------------------------- xgboost


class _BoosterFlavor(Flavor):
    """A gradient-boosting library with its own booster: an objective per task, rounds with early
    stopping on the validation slice, and an MLflow flavor that logs and loads the booster in the
    library's own format (no pickle)."""

    OBJECTIVES: ClassVar[dict[str, str]]
    DEFAULT_ROUNDS = 500
    DEFAULT_EARLY_STOPPING = 30

    def validate(self, params: dict[str, Any], task: Task) -> None:
        super().validate(params, task)
        objective = params.get("objective")
        if objective is not None and objective != self.OBJECTIVES[task]:
            raise TaskMismatchError(
                f"{self.name} objective {objective!r}", task, f"this flavor trains {self.OBJECTIVES[task]!r} for it"
            )

    def _rounds(self, params: dict[str, Any], task: Task) -> tuple[dict[str, Any], int, int]:
        """The config's library parameters without the rounds and patience, and those two."""
        self.validate(params, task)
        given = dict(params)
        rounds = int(given.pop("num_boost_round", self.DEFAULT_ROUNDS))
        patience = int(given.pop("early_stopping_rounds", self.DEFAULT_EARLY_STOPPING))
        return given, rounds, patience

    def _mlflow(self) -> Any:
        return importlib.import_module(f"mlflow.{self.mlflow_flavor}")

    def _log(self, model: Any, name: str, signature: Any, input_example: Any, pip_requirements: list[str]) -> ModelInfo:
        info = self._mlflow().log_model(
            model, name=name, signature=signature, input_example=input_example, pip_requirements=pip_requirements
        )
        return info

    def load(self, model_uri: str) -> Any:
        """The booster behind a registry URI, in the library's own format."""
        return self._mlflow().load_model(registry_uri(model_uri))


class XGBoostFlavor(_BoosterFlavor):
    """Native ``xgb.Booster`` trained with ``xgb.train``, early-stopped on the validation slice and
    cut back to its best round. Scoring uses ``inplace_predict``: no DMatrix per call, which keeps a
    single row (the service's case) well under a millisecond."""

    name = "xgboost"
    mlflow_flavor = "xgboost"
    OBJECTIVES: ClassVar[dict[str, str]] = {"classification": "binary:logistic", "regression": "reg:squarederror"}
    EVAL_METRICS: ClassVar[dict[str, list[str]]] = {"classification": ["logloss", "auc"], "regression": ["rmse"]}

    def booster_params(self, params: dict[str, Any], seed: int, task: Task) -> tuple[dict[str, Any], int, int]:
        """Library parameters (defaults, then the config's), rounds and early-stopping patience."""
        given, rounds, patience = self._rounds(params, task)
        merged = {
            "objective": self.OBJECTIVES[task],
            "eval_metric": self.EVAL_METRICS[task],
            "tree_method": "hist",
            "seed": seed,
            **given,
        }
        return merged, rounds, patience

    def fit(
        self,
        train_X: np.ndarray,
        train_y: np.ndarray,
        valid_X: np.ndarray,
        valid_y: np.ndarray,
        params: dict[str, Any],
        seed: int,
        task: Task,
        feature_names: Sequence[str] | None = None,
    ) -> Fitted:
        import xgboost as xgb

        booster_params, rounds, patience = self.booster_params(params, seed, task)
        if task == "classification":
            _check_binary(train_y, "training")
        names = list(feature_names) if feature_names is not None else None
        dtrain = xgb.DMatrix(np.asarray(train_X, dtype=np.float32), label=train_y, feature_names=names)
        dvalid = xgb.DMatrix(np.asarray(valid_X, dtype=np.float32), label=valid_y, feature_names=names)
        history: dict[str, dict[str, list[float]]] = {}
        booster = xgb.train(
            booster_params,
            dtrain,
            num_boost_round=rounds,
            evals=[(dvalid, "valid")],
            early_stopping_rounds=patience,
            evals_result=history,
            verbose_eval=False,
        )
        best = int(booster.best_iteration)
        booster = booster[: best + 1]  # keep only the trees up to the best round
        recorded = {**booster_params, "num_boost_round": rounds, "early_stopping_rounds": patience}
        return Fitted(booster, self.name, task, recorded, best, history.get("valid", {}))

    def predict(self, model: Any, X: np.ndarray) -> np.ndarray:
        return np.asarray(model.inplace_predict(np.asarray(X, dtype=np.float32)), dtype=np.float64).reshape(-1)


# --------------------------------------------------------------------------------------- sklearn


def _normalise_prefixes(prefixes: Sequence[str]) -> tuple[str, ...]:
    """``sklearn`` and ``sklearn.`` both mean the package and its submodules, never ``sklearnx``."""
    out = tuple(p if p.endswith(".") else p + "." for p in prefixes if p.strip("."))
    if not out:
        raise FlavorError("the estimator allowlist is empty: name at least one module prefix, e.g. 'sklearn.'")
    return out


def _allowed(dotted: str, prefixes: Sequence[str]) -> bool:
    return any(dotted.startswith(p) for p in prefixes)


def resolve_estimator(path: str, allowed_prefixes: Sequence[str] = DEFAULT_ALLOWED_PREFIXES) -> type:
    """The estimator class a dotted path names, imported only if the path is under the allowlist.

    The check comes before any import: importing a module runs its code, so a path from config
    text must be judged on its text first. The class's own module must be allowed too (a
    re-export from elsewhere is not)."""
    from sklearn.base import BaseEstimator

    prefixes = _normalise_prefixes(allowed_prefixes)
    if not isinstance(path, str) or not _DOTTED.match(path):
        raise EstimatorNotFoundError(str(path), "expected a dotted path such as 'sklearn.linear_model.Ridge'")
    if not _allowed(path, prefixes):
        raise EstimatorNotAllowedError(path, prefixes)
    module_name, _, class_name = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EstimatorNotFoundError(path, f"no module {module_name!r} ({exc})") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise EstimatorNotFoundError(path, f"module {module_name!r} has no {class_name!r}")
    if not isinstance(cls, type) or not issubclass(cls, BaseEstimator):
        raise EstimatorNotFoundError(path, "it is not a scikit-learn estimator class")
    if not _allowed(cls.__module__ + ".", prefixes):
        raise EstimatorNotAllowedError(f"{path} (defined in {cls.__module__})", prefixes)
    return cls


class SklearnFlavor(Flavor):
    """Any scikit-learn estimator named by a dotted path, constructed with the config's parameters.

    Classifiers must have ``predict_proba`` (the lifecycle scores probabilities). The validation
    slice is not used for fitting: scikit-learn estimators that stop early hold out their own
    slice (``early_stopping``/``validation_fraction``), set through ``params``.

    Missing values arrive as NaN (the lifecycle's matrix convention). An estimator whose tags say it
    cannot take NaN (``Ridge``, ``LogisticRegression``…) is fitted behind a median ``SimpleImputer``
    in a ``Pipeline``, so any estimator runs on a table with gaps; the imputer is part of the logged
    model, so serving imputes with the training medians."""

    name = "sklearn"
    mlflow_flavor = "sklearn"

    def __init__(self, estimator: str | None = None, allowed_prefixes: Sequence[str] = DEFAULT_ALLOWED_PREFIXES):
        self.allowed_prefixes = _normalise_prefixes(allowed_prefixes)
        self.estimator = estimator
        self.estimator_class = resolve_estimator(estimator, self.allowed_prefixes) if estimator else None

    def build(self, params: dict[str, Any], seed: int, task: Task) -> Any:
        """The unfitted estimator, checked against ``task``; seeded unless ``params`` sets a seed."""
        from sklearn.base import is_classifier, is_regressor

        _check_task(task)
        if self.estimator_class is None:
            raise FlavorError(
                "the sklearn flavor needs an estimator: a dotted path such as 'sklearn.linear_model.Ridge'"
            )
        try:
            est = self.estimator_class(**params)
        except TypeError as exc:
            raise FlavorError(f"bad parameters for {self.estimator}: {exc}") from None
        if "random_state" in est.get_params() and "random_state" not in params:
            est.set_params(random_state=seed)
        if task == "classification":
            if not is_classifier(est):
                raise TaskMismatchError(f"estimator {self.estimator!r}", task, "it is not a classifier")
            if not hasattr(est, "predict_proba"):
                raise MissingPredictProbaError(str(self.estimator))
        elif not is_regressor(est):
            raise TaskMismatchError(f"estimator {self.estimator!r}", task, "it is not a regressor")
        return est

    @staticmethod
    def with_imputer(est: Any) -> Any:
        """``est`` itself if it takes NaN, else ``est`` behind a median imputer (see the class)."""
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import Pipeline
        from sklearn.utils import get_tags

        if get_tags(est).input_tags.allow_nan:
            return est
        return Pipeline([("impute", SimpleImputer(strategy="median", keep_empty_features=True)), ("model", est)])

    def validate(self, params: dict[str, Any], task: Task) -> None:
        self.build(params, 0, task)

    def fit(
        self,
        train_X: np.ndarray,
        train_y: np.ndarray,
        valid_X: np.ndarray,
        valid_y: np.ndarray,
        params: dict[str, Any],
        seed: int,
        task: Task,
        feature_names: Sequence[str] | None = None,
    ) -> Fitted:
        est = self.build(params, seed, task)
        if task == "classification":
            _check_binary(train_y, "training")
        model = self.with_imputer(est)
        model.fit(np.asarray(train_X, dtype=np.float32), train_y)
        recorded = {"estimator": self.estimator, **est.get_params(deep=False), "imputed": model is not est}
        return Fitted(model, self.name, task, recorded)

    def predict(self, model: Any, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if hasattr(model, "predict_proba") and hasattr(model, "classes_"):
            classes = list(model.classes_)
            column = classes.index(1) if 1 in classes else len(classes) - 1
            return np.asarray(model.predict_proba(X)[:, column], dtype=np.float64)
        return np.asarray(model.predict(X), dtype=np.float64).reshape(-1)

    def _trusted(self, type_name: str) -> bool:
        return type_name in SKOPS_EXTRA_TRUSTED or _allowed(type_name, self.allowed_prefixes)

    def _log(self, model: Any, name: str, signature: Any, input_example: Any, pip_requirements: list[str]) -> ModelInfo:
        import mlflow.sklearn
        import skops
        import skops.io

        # skops lists the types it would not construct by default; record the allowed ones so a
        # plain ``mlflow.sklearn.load_model`` (with MLflow's flag set) can load the model too.
        untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
        refused = [t for t in untrusted if not self._trusted(t)]
        if refused:
            raise UntrustedModelError("the model to log", f"it holds types outside the allowlist: {refused}")
        if not any(r.split("=")[0].strip().lower() == "skops" for r in pip_requirements):
            pip_requirements = [*pip_requirements, f"skops=={skops.__version__}"]  # loading needs it
        with warnings.catch_warnings():
            # MLflow checks the input example (a DataFrame, for a readable signature) against the
            # model, which was fitted on a bare matrix: scikit-learn's notice about it is expected.
            warnings.filterwarnings("ignore", message="X has feature names")
            info = mlflow.sklearn.log_model(
                model,
                name=name,
                signature=signature,
                input_example=input_example,
                pip_requirements=pip_requirements,
                serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
                skops_trusted_types=list(untrusted) or None,
            )
        return info

    def load(self, model_uri: str) -> Any:
        """Download the registered model and load its skops file, trusting only allowlisted types.

        MLflow's own loader would need a process-wide flag and would trust the type list the
        model file carries; here the trusted types come from this flavor's allowlist instead."""
        import mlflow.artifacts
        import skops.io
        from mlflow.models import Model

        uri = registry_uri(model_uri)
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
            conf = Model.load(str(local)).flavors.get(self.mlflow_flavor)
            if conf is None:
                raise UntrustedModelError(uri, "it was not logged with the sklearn flavor")
            if conf.get("serialization_format") != "skops":
                raise UntrustedModelError(
                    uri, f"it is serialized as {conf.get('serialization_format')!r}: only skops is loaded, never pickle"
                )
            path = local / conf["pickled_model"]
            untrusted = skops.io.get_untrusted_types(file=path)
            refused = [t for t in untrusted if not self._trusted(t)]
            if refused:
                raise UntrustedModelError(uri, f"it would construct types outside the allowlist: {refused}")
            return skops.io.load(path, trusted=untrusted)


# -------------------------------------------------------------------------------------- registry


class LightGBMFlavor(_BoosterFlavor):
    """Native ``lgb.Booster`` trained with ``lgb.train``, early-stopped on the validation slice and
    kept at its best round. Logged and loaded with MLflow's lightgbm flavor (the Booster's own text
    format: no pickle). Deterministic for a seed (``deterministic`` and a fixed thread count)."""

    name = "lightgbm"
    mlflow_flavor = "lightgbm"
    OBJECTIVES: ClassVar[dict[str, str]] = {"classification": "binary", "regression": "regression"}
    METRICS: ClassVar[dict[str, str]] = {"classification": "binary_logloss", "regression": "rmse"}

    def fit(
        self,
        train_X: np.ndarray,
        train_y: np.ndarray,
        valid_X: np.ndarray,
        valid_y: np.ndarray,
        params: dict[str, Any],
        seed: int,
        task: Task,
        feature_names: Sequence[str] | None = None,
    ) -> Fitted:
        import lightgbm as lgb

        given, rounds, patience = self._rounds(params, task)
        if task == "classification":
            _check_binary(train_y, "training")
        merged = {
            "objective": self.OBJECTIVES[task],
            "metric": self.METRICS[task],
            "seed": seed,
            "deterministic": True,
            "num_threads": 2,
            "verbosity": -1,
            **given,
        }
        names = list(feature_names) if feature_names is not None else "auto"
        dtrain = lgb.Dataset(np.asarray(train_X, dtype=np.float64), label=train_y, feature_name=names)
        dvalid = lgb.Dataset(np.asarray(valid_X, dtype=np.float64), label=valid_y, reference=dtrain)
        history: dict[str, Any] = {}
        booster = lgb.train(
            merged,
            dtrain,
            num_boost_round=rounds,
            valid_sets=[dvalid],
            valid_names=["valid"],
            callbacks=[lgb.early_stopping(patience, verbose=False), lgb.record_evaluation(history)],
        )
        best = int(booster.best_iteration or booster.current_iteration())
        recorded = {**merged, "num_boost_round": rounds, "early_stopping_rounds": patience}
        return Fitted(booster, self.name, task, recorded, best - 1, dict(history.get("valid", {})))

    def predict(self, model: Any, X: np.ndarray) -> np.ndarray:
        best = model.best_iteration or None
        return np.asarray(model.predict(np.asarray(X, dtype=np.float64), num_iteration=best), dtype=np.float64)


def _lightgbm(**_: Any) -> Flavor:
    if importlib.util.find_spec("lightgbm") is None:
        raise FlavorNotInstalledError("lightgbm", "lightgbm", "lightgbm")
    return LightGBMFlavor()


def _xgboost(**_: Any) -> Flavor:
    if importlib.util.find_spec("xgboost") is None:
        raise FlavorNotInstalledError("xgboost", "xgboost", "xgboost")
    return XGBoostFlavor()


def _sklearn(estimator: str | None = None, allowed_prefixes: Sequence[str] = DEFAULT_ALLOWED_PREFIXES) -> Flavor:
    return SklearnFlavor(estimator, allowed_prefixes)


FLAVORS: dict[str, Callable[..., Flavor]] = {"xgboost": _xgboost, "sklearn": _sklearn, "lightgbm": _lightgbm}


def known_flavors() -> tuple[str, ...]:
    return tuple(FLAVORS)


def flavor_for(
    name: str, *, estimator: str | None = None, allowed_prefixes: Sequence[str] = DEFAULT_ALLOWED_PREFIXES
) -> Flavor:
    """The flavor called ``name``. ``estimator`` (a dotted path) and ``allowed_prefixes`` are the
    sklearn flavor's options; the others ignore them. Unknown names list the known ones."""
    factory = FLAVORS.get(name)
    if factory is None:
        raise UnknownFlavorError(name, known_flavors())
    return factory(estimator=estimator, allowed_prefixes=allowed_prefixes)


def flavor_of(model_uri: str, allowed_prefixes: Sequence[str] = DEFAULT_ALLOWED_PREFIXES) -> Flavor:
    """The flavor that loads a registered model, read from its MLmodel file (no model loaded):
    stages that load ``models:/NAME@champion`` need not know how it was trained."""
    from mlflow.models import get_model_info

    flavors = get_model_info(registry_uri(model_uri)).flavors
    for name in FLAVORS:
        if name in flavors:
            return flavor_for(name, allowed_prefixes=allowed_prefixes)
    raise UnknownFlavorError(f"{model_uri} ({', '.join(sorted(flavors))})", known_flavors())
