"""The error tree and the one table that answers it: every class of recsvc.errors has its
status and title, StoreUnavailable says when to retry, and the trainer's ConfigError is the
service's too."""

from __future__ import annotations

import inspect
from datetime import date

import pytest

from recsvc import errors
from recsvc.api.problems import PROBLEMS, problem_of
from recsvc.errors import RecsvcError
from training import errors as training_errors

CLASSES = [
    kind
    for _, kind in inspect.getmembers(errors, inspect.isclass)
    if issubclass(kind, RecsvcError) and kind.__module__ == errors.__name__
]

EXPECTED = {
    "RecsvcError": (500, "Internal Server Error"),
    "ConfigError": (500, "Service misconfigured"),
    "InvalidParameter": (400, "Invalid parameter"),
    "UnknownCategory": (400, "Invalid parameter"),
    "BatchError": (400, "Invalid batch"),
    "AuthError": (401, "Unauthorized"),
    "Forbidden": (403, "Forbidden"),
    "RateLimited": (429, "Too Many Requests"),
    "UnknownSlot": (404, "Unknown slot"),
    "UnknownItem": (404, "Unknown item"),
    "UnknownCustomer": (404, "Unknown customer"),
    "Unsubscribed": (409, "Unsubscribed"),
    "ExperimentNotRunning": (409, "No experiment running"),
    "StoreUnavailable": (503, "Store unavailable"),
    "StoreNotRestored": (503, "Store unavailable"),
    "BundleError": (503, "No model loaded"),
    "NoModelLoaded": (503, "No model loaded"),
    "BundleNotFound": (503, "No model loaded"),
    "BundleCorrupt": (503, "No model loaded"),
}


def sample(kind: type[RecsvcError]) -> RecsvcError:
    if kind is errors.InvalidParameter:
        return kind("n", "must be between 1 and 12, got 99")
    if kind is errors.UnknownCategory:
        return kind("Cakes ", ["kitchen", "garden"])
    if kind is errors.UnknownSlot:
        return kind("side", ["home", "basket"])
    if kind is errors.RateLimited:
        return kind("web", 3)
    if kind is errors.Unsubscribed:
        return kind(date(2011, 12, 10))
    return kind("what went wrong")


def test_every_error_class_is_in_the_tree_and_the_table() -> None:
    assert sorted(kind.__name__ for kind in CLASSES) == sorted(EXPECTED)
    docstring = errors.__doc__ or ""
    for kind in CLASSES:
        assert kind.__name__ in docstring
        problem = problem_of(sample(kind))
        assert (problem.status, problem.title) == EXPECTED[kind.__name__], kind.__name__
    assert set(PROBLEMS) <= set(CLASSES)


@pytest.mark.parametrize("kind", [errors.StoreUnavailable, errors.StoreNotRestored])
def test_store_unavailable_says_when_to_retry(kind: type[RecsvcError]) -> None:
    problem = problem_of(kind("events cannot be recorded now; nothing was applied, retry"))
    assert problem.headers == {"Retry-After": "1"}
    assert problem.detail == "events cannot be recorded now; nothing was applied, retry"


def test_headers_and_invalid_params_come_from_the_error() -> None:
    assert problem_of(errors.AuthError("no key")).headers == {"WWW-Authenticate": "Bearer"}
    assert problem_of(errors.Forbidden("lacks the scope")).headers == {}
    assert problem_of(errors.RateLimited("web", 3)).headers == {"Retry-After": "3"}
    problem = problem_of(errors.UnknownCategory("Cakes ", ["kitchen", "garden"]))
    assert problem.detail == "category: unknown category 'Cakes '; known: kitchen, garden"
    assert problem.invalid_params is not None
    assert [(p.name, p.reason) for p in problem.invalid_params] == [
        ("category", "unknown category 'Cakes '; known: kitchen, garden")
    ]


def test_config_error_is_defined_once() -> None:
    assert issubclass(training_errors.ConfigError, errors.ConfigError)
    assert issubclass(training_errors.ConfigError, training_errors.TrainingError)
    with pytest.raises(errors.ConfigError, match="model.alpha"):
        raise training_errors.ConfigError("train.toml: model.alpha: must be a number")
