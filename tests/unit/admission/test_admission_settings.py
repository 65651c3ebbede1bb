"""Where the webhook is served (IMAGEWARD_ADMISSION_PROCESS)."""

from __future__ import annotations

import pytest

from imageward import errors, settings


def test_the_webhook_has_its_own_process_by_default() -> None:
    assert settings.from_env(environ={}).admission.process == "own"
    shared = settings.from_env(environ={"IMAGEWARD_ADMISSION_PROCESS": "shared"})
    assert shared.admission.process == "shared"


def test_an_unknown_place_names_the_variable_and_the_choices() -> None:
    with pytest.raises(errors.ConfigurationError) as caught:
        settings.from_env(environ={"IMAGEWARD_ADMISSION_PROCESS": "thread"})
    assert "IMAGEWARD_ADMISSION_PROCESS='thread'" in str(caught.value)
    assert "own, shared" in str(caught.value)


def test_an_empty_mutating_webhook_name_means_there_is_none() -> None:
    # The chart without its mutating webhook: pinDigest policies only validate.
    config = settings.from_env(environ={"IMAGEWARD_MUTATING_WEBHOOK": ""})
    assert config.admission.mutating_configuration == ""
    assert settings.from_env(environ={}).admission.mutating_configuration == "imageward"
