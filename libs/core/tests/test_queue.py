"""The one error policy of the workers' tasks (`cliprs.queue.retry_or_fail`)."""

from __future__ import annotations

import logging

import pytest
import redis

from cliprs.queue import retry_or_fail

log = logging.getLogger("test.queue")


def test_a_transient_error_is_retried_and_fails_nothing(caplog: pytest.LogCaptureFixture) -> None:
    failed: list[Exception] = []
    with pytest.raises(redis.ConnectionError), retry_or_fail("job 7: fetch", failed.append, log):
        raise redis.ConnectionError("Redis went away")
    assert failed == []
    assert "job 7: fetch interrupted by a transient error; will retry" in caplog.text


def test_any_other_error_fails_the_work_with_it_and_is_raised(caplog: pytest.LogCaptureFixture) -> None:
    failed: list[Exception] = []
    with pytest.raises(ValueError, match="bad tile"), retry_or_fail("job 7: fetch", failed.append, log):
        raise ValueError("bad tile")
    assert [str(e) for e in failed] == ["bad tile"]
    assert "job 7: fetch failed" in caplog.text


def test_work_that_succeeds_fails_nothing() -> None:
    failed: list[Exception] = []
    with retry_or_fail("run 3", failed.append, log):
        done = True
    assert done and failed == []
