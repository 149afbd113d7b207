"""A Redis database of a test run's own (named ``redis_db``, not ``redis``, so that it can never
shadow the redis client package)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import redis

TEST_REDIS_URL = os.environ.get("CLIPRS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
LOCK_KEY = "cliprs-test-session"


@contextmanager
def private_redis_db(base_url: str = TEST_REDIS_URL, owner: str = "tests") -> Iterator[str]:
    """A Redis database nobody else uses, emptied before and after.

    Celery queues are per Redis database, so two runs on one machine (a developer's tests, CI's,
    a benchmark) must not share one: each claims a free database among 8..15 with a lock key,
    unless ``CLIPRS_TEST_REDIS_URL`` pins one.
    """
    base = urlsplit(base_url)
    pinned = os.environ.get("CLIPRS_TEST_REDIS_URL")
    candidates = [int(base.path.strip("/") or 0)] if pinned else list(range(15, 7, -1))
    for db in candidates:
        url = f"redis://{base.netloc}/{db}"
        client = redis.Redis.from_url(url)
        if client.set(LOCK_KEY, owner, nx=True, ex=3600):
            break
        client.close()
    else:
        raise RuntimeError(f"no free Redis database among {candidates}; is another run stuck?")
    empty_redis_db(url)
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


def empty_redis_db(url: str) -> None:
    """Delete every key of a claimed database but its lock: queued and unacknowledged tasks,
    quotas, ... (what one platform left behind is never delivered to the next)."""
    client = redis.Redis.from_url(url)
    try:
        for key in client.scan_iter():
            if key != LOCK_KEY.encode():
                client.delete(key)
    finally:
        client.close()
