"""One error family (engine/errors.py): every error the engine raises is in it, carries the
user's message and the option to blame, and is found again by the name a stored job keeps."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import engine
from engine import EngineError, InvalidRequest, NotAudio, QueueFull, error_class
from ui.openai_compat import ERROR_KINDS, UNEXPECTED, api_error, kind_of_class, stored_error_class


def engine_exceptions() -> set:
    found = set()
    for module in pkgutil.walk_packages(engine.__path__, "engine."):
        for value in vars(importlib.import_module(module.name)).values():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__.startswith("engine")
            ):
                found.add(value)
    return found


def test_every_error_the_engine_defines_is_in_the_family():
    classes = engine_exceptions()
    assert len(classes) >= 15
    outside = sorted(
        cls.__qualname__ + " in " + cls.__module__
        for cls in classes
        if cls.__module__ != "engine.errors" or not issubclass(cls, EngineError)
    )
    assert not outside, outside


def test_a_stored_error_name_finds_its_class_and_its_answer_again():
    for cls in engine_exceptions():
        assert error_class(cls.__name__) is cls
        assert stored_error_class(cls.__name__) is cls
    assert kind_of_class(stored_error_class("NotAudio")).code == "invalid_file_format"
    assert stored_error_class("OutOfDiskSpace") is not None  # the job manager's, from the table
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
    error = cls("the message for the person") if cls is not FileNotFoundError else cls("no such file")
    assert api_error(error).message.startswith(str(error))
