"""Flavors: each one fits, logs, registers, loads back by alias and scores the same as in memory.

One temporary SQLite MLflow store serves the whole module (creating its schema takes seconds); every
case registers its own model name, so cases do not see each other's aliases. Data is small and
generated: the point is the round trip and that the model learned, not its quality.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification, make_regression
from sklearn.metrics import roc_auc_score

import mlcycle  # noqa: F401  (telemetry off before MLflow is imported)
from mlcycle import flavors
from mlcycle.flavors import (
    EstimatorNotAllowedError,
    EstimatorNotFoundError,
    MissingPredictProbaError,
    NotARegistryUriError,
    TaskMismatchError,
    UnknownFlavorError,
    UntrustedModelError,
    flavor_for,
)

FEATURES = [f"f{i}" for i in range(8)]


@dataclass(frozen=True)
class Data:
    train_X: np.ndarray
    train_y: np.ndarray
    valid_X: np.ndarray
    valid_y: np.ndarray
    test_X: np.ndarray
    test_y: np.ndarray


def _split(X: np.ndarray, y: np.ndarray) -> Data:
    X = X.astype(np.float32)
    X[::17, 3] = np.nan  # missing values, as real tables have them
    a, b = int(len(X) * 0.6), int(len(X) * 0.8)
    return Data(X[:a], y[:a], X[a:b], y[a:b], X[b:], y[b:])


@pytest.fixture(scope="module")
def classification() -> Data:
    X, y = make_classification(n_samples=3000, n_features=8, n_informative=5, random_state=3)
    return _split(X, y)


@pytest.fixture(scope="module")
def regression() -> Data:
    X, y = make_regression(n_samples=3000, n_features=8, n_informative=5, noise=10.0, random_state=3)
    return _split(X, y)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A SQLite tracking and registry store with file artifacts; the previous URIs come back after."""
    import mlflow

    root: Path = tmp_path_factory.mktemp("mlflow")
    before_tracking, before_registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.MlflowClient().create_experiment("flavors", artifact_location=(root / "artifacts").as_uri())
    yield experiment
    mlflow.set_tracking_uri(before_tracking)
    mlflow.set_registry_uri(before_registry)


def _pip() -> list[str]:
    import mlflow
    import sklearn

    return [f"mlflow=={mlflow.__version__}", f"scikit-learn=={sklearn.__version__}"]


def _round_trip(flavor: flavors.Flavor, model: object, experiment: str, name: str, X: np.ndarray) -> object:
    """Log in a run, register, point ``champion`` at it, load it back by alias."""
    import mlflow

    example = pd.DataFrame(X[:5].astype(np.float64), columns=FEATURES)
    with mlflow.start_run(experiment_id=experiment):
        model_uri = flavor.log(model, "model", input_example=example, pip_requirements=_pip()).model_uri
    version = mlflow.register_model(model_uri, name).version
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", version)
    uri = flavors.alias_uri(name, "champion")
    assert flavors.flavor_of(uri).name == flavor.name
    return flavor.load(uri)


CASES = [
    ("xgboost", None, "classification", {"max_depth": 3, "eta": 0.2, "nthread": 1}),
    ("xgboost", None, "regression", {"max_depth": 3, "eta": 0.2, "nthread": 1}),
    ("sklearn", "sklearn.ensemble.HistGradientBoostingClassifier", "classification", {"max_iter": 60}),
    ("sklearn", "sklearn.linear_model.Ridge", "regression", {"alpha": 1.0}),
    ("lightgbm", None, "classification", {"num_leaves": 15, "learning_rate": 0.1}),
    ("lightgbm", None, "regression", {"num_leaves": 15, "learning_rate": 0.1}),
]


@pytest.mark.parametrize(("name", "estimator", "task", "params"), CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_fit_log_register_load_by_alias_scores_the_same(
    name: str, estimator: str | None, task: flavors.Task, params: dict, store: str, request: pytest.FixtureRequest
) -> None:
    data: Data = request.getfixturevalue(task)
    flavor = flavor_for(name, estimator=estimator)
    fitted = flavor.fit(data.train_X, data.train_y, data.valid_X, data.valid_y, params, 7, task, feature_names=FEATURES)
    assert fitted.flavor == name and fitted.task == task
    in_memory = flavor.predict(fitted.model, data.test_X)
    assert in_memory.shape == (len(data.test_X),) and in_memory.dtype == np.float64

    loaded = _round_trip(flavor, fitted.model, store, f"flavors-{name}-{task}", data.test_X)
    np.testing.assert_allclose(flavor.predict(loaded, data.test_X), in_memory, rtol=1e-6, atol=1e-6)
    # one row at a time, as the service scores
    np.testing.assert_allclose(flavor.predict(loaded, data.test_X[:1]), in_memory[:1], rtol=1e-6, atol=1e-6)

    if task == "classification":
        assert ((in_memory >= 0) & (in_memory <= 1)).all()
        assert roc_auc_score(data.test_y, in_memory) > 0.8
    else:
        rmse = float(np.sqrt(np.mean((in_memory - data.test_y) ** 2)))
        assert rmse < 0.5 * float(np.std(data.test_y))


def test_xgboost_stops_early_on_the_validation_slice(classification: Data) -> None:
    params = {"max_depth": 3, "eta": 0.3, "nthread": 1, "num_boost_round": 400, "early_stopping_rounds": 5}
    fitted = flavor_for("xgboost").fit(
        classification.train_X, classification.train_y, classification.valid_X, classification.valid_y,
        params, 7, "classification",
    )  # fmt: skip
    assert fitted.best_iteration is not None and fitted.best_iteration < 399
    assert fitted.model.num_boosted_rounds() == fitted.best_iteration + 1
    assert fitted.params["objective"] == "binary:logistic" and fitted.params["seed"] == 7
    assert "valid" not in fitted.history and fitted.history  # per-metric history of the valid slice


def test_xgboost_objective_must_match_the_task() -> None:
    with pytest.raises(TaskMismatchError, match="reg:squarederror"):
        flavor_for("xgboost").validate({"objective": "binary:logistic"}, "regression")


def test_sklearn_fit_is_seeded_and_deterministic(classification: Data) -> None:
    flavor = flavor_for("sklearn", estimator="sklearn.ensemble.HistGradientBoostingClassifier")
    args = (classification.train_X, classification.train_y, classification.valid_X, classification.valid_y)
    a = flavor.fit(*args, {"max_iter": 20}, 11, "classification")
    b = flavor.fit(*args, {"max_iter": 20}, 11, "classification")
    assert a.params["random_state"] == 11 and a.params["estimator"].endswith("HistGradientBoostingClassifier")
    np.testing.assert_array_equal(
        flavor.predict(a.model, classification.test_X), flavor.predict(b.model, classification.test_X)
    )


@pytest.mark.parametrize(
    "path",
    ["os.system", "subprocess.Popen", "sklearnx.Foo", "builtins.eval", "sklearn"],
)
def test_estimator_outside_the_allowlist_is_refused_before_any_import(path: str) -> None:
    with pytest.raises((EstimatorNotAllowedError, EstimatorNotFoundError)) as info:
        flavor_for("sklearn", estimator=path)
    if "." in path:
        assert isinstance(info.value, EstimatorNotAllowedError)


def test_allowlist_is_configurable() -> None:
    with pytest.raises(EstimatorNotAllowedError, match="allowed module prefixes"):
        flavor_for("sklearn", estimator="sklearn.linear_model.Ridge", allowed_prefixes=("mypkg.",))


@pytest.mark.parametrize(
    "path",
    ["sklearn.ensemble.NoSuchForest", "sklearn.no_such_module.Ridge", "sklearn.base.clone", "sklearn.linear_model"],
)
def test_estimator_that_does_not_exist_is_named(path: str) -> None:
    with pytest.raises(EstimatorNotFoundError, match="not found"):
        flavor_for("sklearn", estimator=path)


def test_classifier_without_predict_proba_is_refused(classification: Data) -> None:
    flavor = flavor_for("sklearn", estimator="sklearn.svm.LinearSVC")
    with pytest.raises(MissingPredictProbaError, match="predict_proba"):
        flavor.validate({}, "classification")
    with pytest.raises(MissingPredictProbaError):
        flavor.fit(classification.train_X, classification.train_y, None, None, {}, 1, "classification")


def test_estimator_must_fit_the_task() -> None:
    with pytest.raises(TaskMismatchError, match="not a regressor"):
        flavor_for("sklearn", estimator="sklearn.linear_model.LogisticRegression").validate({}, "regression")
    with pytest.raises(TaskMismatchError, match="not a classifier"):
        flavor_for("sklearn", estimator="sklearn.linear_model.Ridge").validate({}, "classification")


def test_lightgbm_objective_must_match_the_task_and_fit_is_deterministic(classification: Data) -> None:
    with pytest.raises(TaskMismatchError, match="lightgbm objective"):
        flavor_for("lightgbm").validate({"objective": "binary"}, "regression")
    runs = [
        flavor_for("lightgbm").fit(classification.train_X, classification.train_y, classification.valid_X,
                                   classification.valid_y, {}, 7, "classification", feature_names=FEATURES)
        for _ in range(2)
    ]  # fmt: skip
    first, second = (flavor_for("lightgbm").predict(r.model, classification.test_X) for r in runs)
    np.testing.assert_array_equal(first, second)
    assert runs[0].best_iteration < runs[0].params["num_boost_round"] - 1  # stopped early


def test_unknown_flavor_lists_the_known_ones() -> None:
    with pytest.raises(UnknownFlavorError, match="xgboost, sklearn, lightgbm") as info:
        flavor_for("catboost")
    assert info.value.known == ("xgboost", "sklearn", "lightgbm")


@pytest.mark.parametrize(
    "uri", ["/tmp/model.pkl", "file:///tmp/model", "runs:/abc/model", "models:/x@../../etc", "s3://b/m"]
)
def test_models_load_from_the_registry_only(uri: str) -> None:
    for name, estimator in (("xgboost", None), ("sklearn", "sklearn.linear_model.Ridge")):
        with pytest.raises(NotARegistryUriError, match="registry only"):
            flavor_for(name, estimator=estimator).load(uri)


def test_a_pickled_sklearn_model_is_never_loaded(regression: Data, store: str) -> None:
    import mlflow
    import mlflow.sklearn
    from sklearn.linear_model import Ridge

    model = Ridge().fit(regression.train_X[:, :2], regression.train_y)
    with mlflow.start_run(experiment_id=store):
        info = mlflow.sklearn.log_model(model, name="model", serialization_format="pickle", pip_requirements=_pip())
    version = mlflow.register_model(info.model_uri, "flavors-pickled").version
    mlflow.MlflowClient().set_registered_model_alias("flavors-pickled", "champion", version)
    with pytest.raises(UntrustedModelError, match="never pickle"):
        flavor_for("sklearn").load("models:/flavors-pickled@champion")


def test_a_skops_model_with_types_outside_the_allowlist_is_not_loaded(classification: Data, store: str) -> None:
    """The types a model file may construct come from the flavor's allowlist, not from the file."""
    flavor = flavor_for("sklearn", estimator="sklearn.ensemble.HistGradientBoostingClassifier")
    fitted = flavor.fit(
        classification.train_X, classification.train_y, None, None, {"max_iter": 5}, 1, "classification"
    )
    _round_trip(flavor, fitted.model, store, "flavors-narrow", classification.test_X)
    narrow = flavor_for("sklearn", allowed_prefixes=("sklearn.linear_model.",))
    with pytest.raises(UntrustedModelError, match="TreePredictor"):
        narrow.load("models:/flavors-narrow@champion")


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_the_baselines_recorded_parameters_reproduce_its_scores(task: str) -> None:
    """The JSON logged for the linear baseline is the whole model: imputing the median,
    standardising and applying the coefficients by hand (NumPy) gives scikit-learn's scores."""
    from mlcycle.training.fit import baseline_parameters, baseline_scores, fit_baseline

    rng = np.random.default_rng(3)
    X = rng.normal(size=(2_000, 4)) * [1.0, 5.0, 0.1, 2.0] + [0.0, 10.0, -1.0, 3.0]
    X[rng.random(X.shape) < 0.1] = np.nan  # missing values: the imputer's medians matter
    signal = np.nan_to_num(X[:, 0]) - 0.2 * np.nan_to_num(X[:, 1])
    y = (signal + rng.normal(size=2_000) > -2).astype(int) if task == "classification" else signal
    features = ["a", "b", "c", "d"]
    frame = pd.DataFrame(X, columns=features).assign(y=y)
    baseline = fit_baseline(frame, features, "y", seed=0, task=task)
    params = baseline_parameters(baseline, features)
    f = [params["features"][name] for name in features]
    filled = np.where(np.isnan(X), [p["median"] for p in f], X)
    z = (filled - [p["mean"] for p in f]) / [p["scale"] for p in f]
    linear = z @ [p["coefficient"] for p in f] + params["intercept"]
    by_hand = 1 / (1 + np.exp(-linear)) if task == "classification" else linear
    np.testing.assert_allclose(by_hand, baseline_scores(baseline, X, task), rtol=1e-9, atol=1e-12)
