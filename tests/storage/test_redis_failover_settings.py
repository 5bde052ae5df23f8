"""The Sentinel and durability settings: parsed, checked, and refused with the variable named."""

from __future__ import annotations

import pytest

from coordinator.config import ConfigError, load_settings


def test_off_by_default() -> None:
    settings = load_settings({})
    assert settings.redis_sentinels == ()
    assert settings.redis_min_replicas == 0


def test_a_short_redis_timeout_needs_no_replica_timeout_while_durability_is_off() -> None:
    assert load_settings({"COORDINATOR_REDIS_TIMEOUT_S": "0.5"}).redis_timeout_s == 0.5


def test_sentinels_master_and_durability() -> None:
    settings = load_settings(
        {
            "REDIS_URL": "rediss://:secret@ignored:6379/2",
            "COORDINATOR_REDIS_SENTINELS": "s1:26379, s2:26380,s3,[::1]:5000",
            "COORDINATOR_REDIS_SENTINEL_MASTER": "orders",
            "COORDINATOR_REDIS_SENTINEL_PASSWORD": "sentinel-secret",
            "COORDINATOR_REDIS_MIN_REPLICAS": "1",
            "COORDINATOR_REDIS_REPLICA_TIMEOUT_MS": "250",
        }
    )
    assert settings.redis_sentinels == (
        ("s1", 26379),
        ("s2", 26380),
        ("s3", 26379),
        ("::1", 5000),
    )
    assert settings.redis_sentinel_master == "orders"
    assert settings.redis_sentinel_password == "sentinel-secret"
    assert (settings.redis_min_replicas, settings.redis_replica_timeout_ms) == (1, 250)


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"COORDINATOR_REDIS_SENTINELS": "s1:notaport"}, "COORDINATOR_REDIS_SENTINELS"),
        ({"COORDINATOR_REDIS_SENTINELS": "s1:1,,s2:2"}, "COORDINATOR_REDIS_SENTINELS"),
        ({"COORDINATOR_REDIS_SENTINEL_MASTER": "my master"}, "COORDINATOR_REDIS_SENTINEL_MASTER"),
        ({"COORDINATOR_REDIS_MIN_REPLICAS": "-1"}, "COORDINATOR_REDIS_MIN_REPLICAS"),
        ({"COORDINATOR_REDIS_REPLICA_TIMEOUT_MS": "0"}, "COORDINATOR_REDIS_REPLICA_TIMEOUT_MS"),
        (
            {"COORDINATOR_REDIS_SENTINELS": "s1", "REDIS_URL": "unix:///run/redis.sock"},
            "COORDINATOR_REDIS_SENTINELS",
        ),
        (
            # The wait for replicas must end before the client gives Redis up as unreachable.
            {
                "COORDINATOR_REDIS_MIN_REPLICAS": "1",
                "COORDINATOR_REDIS_REPLICA_TIMEOUT_MS": "2000",
                "COORDINATOR_REDIS_TIMEOUT_S": "2",
            },
            "COORDINATOR_REDIS_REPLICA_TIMEOUT_MS",
        ),
    ],
)
def test_refused_with_the_variable_named(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=f"^{named}:"):
        load_settings(environ)
