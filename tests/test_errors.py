"""One error family (engine/errors.py, and jobs/errors.py under the same base): every error
the engine or the job service raises is in it, carries the user's message and the option to
blame, and is found again by the name a stored job keeps."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import engine
import jobs
from engine import EngineError, InvalidRequest, NotAudio, QueueFull, error_class
from ui.openai_compat import ERROR_KINDS, UNEXPECTED, api_error, kind_of_class, stored_error_class

# Raised and caught inside one module, never reaching a caller: the pool's timeout is a
# psycopg.OperationalError on purpose, so the store turns it into StoreUnavailable like any
# lost connection.
INTERNAL = {"jobs.postgres_pool.PoolExhausted"}


def defined_exceptions(package) -> set:
    found = set()
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        for value in vars(importlib.import_module(module.name)).values():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__.startswith(package.__name__)
                and f"{value.__module__}.{value.__qualname__}" not in INTERNAL
            ):
                found.add(value)
    return found


def engine_exceptions() -> set:
    return defined_exceptions(engine) | defined_exceptions(jobs)


@pytest.mark.parametrize("package", [engine, jobs], ids=lambda p: p.__name__)
def test_every_error_defined_is_in_the_family_in_its_package_errors_module(package):
    classes = defined_exceptions(package)
    assert len(classes) >= (15 if package is engine else 6)
    outside = sorted(
        cls.__qualname__ + " in " + cls.__module__
        for cls in classes
        if cls.__module__ != f"{package.__name__}.errors" or not issubclass(cls, EngineError)
    )
    assert not outside, outside


def test_a_stored_error_name_finds_its_class_and_its_answer_again():
    for cls in engine_exceptions():
        assert error_class(cls.__name__) is cls
        assert stored_error_class(cls.__name__) is cls
    assert kind_of_class(stored_error_class("NotAudio")).code == "invalid_file_format"
    assert kind_of_class(stored_error_class("DiskFull")).status == 507  # the job service's
    assert kind_of_class(stored_error_class("JobInterrupted")).code == "job_interrupted"
    assert stored_error_class("SomethingElse") is None and kind_of_class(RuntimeError) is UNEXPECTED
    assert all(kind.status >= 400 for kind in ERROR_KINDS.values())


def test_the_error_names_the_option_to_blame():
    assert InvalidRequest("temperature: must be between 0 and 2").param == "temperature"
    assert InvalidRequest("something is wrong").param is None
    assert InvalidRequest("x", param="language").param == "language"
    assert NotAudio("'a.mp3' is not audio").param == "file"
    refused = api_error(InvalidRequest("initial_prompt: too long"))
    assert (refused.status, refused.param) == (400, "prompt")  # OpenAI's name for it
    assert api_error(QueueFull("the queue is full")).status == 429
    # as before
    assert isinstance(QueueFull("x"), RuntimeError) and isinstance(InvalidRequest("x"), ValueError)


@pytest.mark.parametrize("cls", sorted(ERROR_KINDS, key=lambda c: c.__name__))
def test_each_mapped_error_keeps_its_message(cls):
    error = cls("no such file") if cls is FileNotFoundError else cls("the message for the person")
    assert api_error(error).message.startswith(str(error))
