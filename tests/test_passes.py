"""tests/passes.py: two test runs on one machine never share a Redis database."""

import pytest
import redis

from tests import passes


@pytest.fixture
def redis_server():
    server = redis.Redis.from_url(f"{passes.REDIS_SERVER}/0", socket_connect_timeout=2)
    try:
        server.ping()
    except redis.RedisError:
        pytest.skip(f"no Redis at {passes.REDIS_SERVER} (the PostgreSQL + Redis pass needs one)")
    return server


def test_runs_at_once_claim_different_databases_and_give_them_back(redis_server):
    with passes.RedisClaim("run-a") as first, passes.RedisClaim("run-b") as second:
        assert first != second
        assert first.startswith(f"{passes.REDIS_SERVER}/") and second.startswith(f"{passes.REDIS_SERVER}/")
        db = int(first.rsplit("/", 1)[1])
        assert 1 <= db <= 15
        assert redis_server.get(f"laneway-test-claim:{db}") == b"run-a"
        assert 0 < redis_server.ttl(f"laneway-test-claim:{db}") <= passes.CLAIM_SECONDS
    assert redis_server.get(f"laneway-test-claim:{db}") is None
    with passes.RedisClaim("run-c") as again:  # the first free one again
        assert int(again.rsplit("/", 1)[1]) <= db


def test_a_claim_someone_else_took_over_is_not_deleted_on_exit(redis_server):
    claim = passes.RedisClaim("run-a")
    url = claim.__enter__()
    key = f"laneway-test-claim:{url.rsplit('/', 1)[1]}"
    redis_server.set(key, "run-z", ex=30)  # run-a's claim expired and another run took the database
    claim.__exit__(None, None, None)
    assert redis_server.get(key) == b"run-z"
    redis_server.delete(key)
