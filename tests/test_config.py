"""Configuration: defaults, the env file, and errors that name the variable."""

import pytest

from coordinator.config import DEFAULT_AGENT_TYPES, ConfigError, Settings, load_settings


def test_defaults_match_the_old_service():
    settings = load_settings({})
    assert settings.redis_url == "redis://localhost:6379/1"
    assert not settings.redis_url_explicit
    assert settings.port == 9001
    assert settings.host == "127.0.0.1"  # loopback: no authentication is configured
    assert settings.agent_types == DEFAULT_AGENT_TYPES
    assert "worker" in settings.agent_types and "inference" in settings.agent_types
    assert settings.node_id  # host name plus a random suffix
    assert load_settings({}).node_id != settings.node_id


def test_environment_wins_over_the_env_file(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text(
        "REDIS_URL=redis://redis.internal:6379/1\nNODE_ID=from-file\nCOORDINATOR_PORT=9100\n"
    )
    settings = load_settings({"COORDINATOR_PORT": "9200"}, env_file)
    assert settings.redis_url == "redis://redis.internal:6379/1"
    assert settings.redis_url_explicit
    assert settings.node_id == "from-file"
    assert settings.port == 9200


def test_agent_type_allow_list_and_wildcard():
    assert load_settings({"COORDINATOR_AGENT_TYPES": "worker, gpu-box"}).agent_types == (
        "worker",
        "gpu-box",
    )
    assert load_settings({"COORDINATOR_AGENT_TYPES": "*"}).any_agent_type
    assert not Settings().any_agent_type


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"COORDINATOR_PORT": "abc"}, "COORDINATOR_PORT"),
        ({"COORDINATOR_PORT": "70000"}, "COORDINATOR_PORT"),
        ({"REDIS_URL": "http://localhost"}, "REDIS_URL"),
        ({"NODE_ID": "has space"}, "NODE_ID"),
        ({"COORDINATOR_HEARTBEAT_INTERVAL_S": "0"}, "COORDINATOR_HEARTBEAT_INTERVAL_S"),
        ({"COORDINATOR_LIVENESS_TIMEOUT_S": "5"}, "COORDINATOR_LIVENESS_TIMEOUT_S"),
        ({"COORDINATOR_AGENT_TYPES": "Worker"}, "COORDINATOR_AGENT_TYPES"),
        ({"COORDINATOR_AGENT_TYPES": " , "}, "COORDINATOR_AGENT_TYPES"),
        ({"COORDINATOR_MAX_MESSAGE_BYTES": "10"}, "COORDINATOR_MAX_MESSAGE_BYTES"),
        ({"COORDINATOR_SHUTDOWN_GRACE_S": "-1"}, "COORDINATOR_SHUTDOWN_GRACE_S"),
        ({"COORDINATOR_LOG_LEVEL": "LOUD"}, "COORDINATOR_LOG_LEVEL"),
        ({"COORDINATOR_HEALTH_CHECK_INTERVAL_S": "5"}, "COORDINATOR_HEALTH_CHECK_INTERVAL_S"),
        ({"COORDINATOR_INACTIVE_RETENTION_S": "nan"}, "COORDINATOR_INACTIVE_RETENTION_S"),
        ({"COORDINATOR_REDIS_MAX_CONNECTIONS": "2"}, "COORDINATOR_REDIS_MAX_CONNECTIONS"),
        ({"COORDINATOR_HOST": "bad host"}, "COORDINATOR_HOST"),
        ({"COORDINATOR_BALANCING_STRATEGY": "fastest"}, "COORDINATOR_BALANCING_STRATEGY"),
        ({"COORDINATOR_BALANCING_STRATEGY": "round robin"}, "COORDINATOR_BALANCING_STRATEGY"),
        ({"COORDINATOR_MAX_TASK_DATA_BYTES": "1mb"}, "COORDINATOR_MAX_TASK_DATA_BYTES"),
        ({"COORDINATOR_MAX_TASK_DATA_BYTES": "1023"}, "COORDINATOR_MAX_TASK_DATA_BYTES"),
        ({"COORDINATOR_MAX_STRUCT_DEPTH": "0"}, "COORDINATOR_MAX_STRUCT_DEPTH"),
        ({"COORDINATOR_MAX_STRUCT_DEPTH": "33"}, "COORDINATOR_MAX_STRUCT_DEPTH"),
        ({"COORDINATOR_MAX_STRUCT_DEPTH": "deep"}, "COORDINATOR_MAX_STRUCT_DEPTH"),
        ({"COORDINATOR_IDEMPOTENCY_WINDOW_S": "0"}, "COORDINATOR_IDEMPOTENCY_WINDOW_S"),
        ({"COORDINATOR_IDEMPOTENCY_WINDOW_S": "a day"}, "COORDINATOR_IDEMPOTENCY_WINDOW_S"),
        ({"COORDINATOR_STREAM_GRACE_S": "-1"}, "COORDINATOR_STREAM_GRACE_S"),
        ({"COORDINATOR_STREAM_GRACE_S": "inf"}, "COORDINATOR_STREAM_GRACE_S"),
        ({"COORDINATOR_TASK_TIMER_INTERVAL_S": "0"}, "COORDINATOR_TASK_TIMER_INTERVAL_S"),
        ({"COORDINATOR_TASK_TIMER_INTERVAL_S": "nan"}, "COORDINATOR_TASK_TIMER_INTERVAL_S"),
        ({"COORDINATOR_TASK_RETENTION_S": "-5"}, "COORDINATOR_TASK_RETENTION_S"),
        ({"COORDINATOR_TASK_RETENTION_S": "week"}, "COORDINATOR_TASK_RETENTION_S"),
    ],
)
def test_bad_values_fail_naming_the_variable(env, variable):
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert str(caught.value).startswith(variable)


def test_task_defaults():
    settings = load_settings({})
    assert settings.balancing_strategy == "least_connections"
    assert settings.max_task_data_bytes == 1024 * 1024
    assert settings.max_struct_depth == 32
    assert load_settings({"COORDINATOR_MAX_STRUCT_DEPTH": "8"}).max_struct_depth == 8
    assert settings.idempotency_window_s == 86_400
    assert settings.stream_grace_s == 15
    assert settings.task_timer_interval_s == 0.5
    assert settings.task_retention_s == 7 * 86_400


def test_task_variables_are_read():
    settings = load_settings(
        {
            "COORDINATOR_MAX_TASK_DATA_BYTES": "2048",
            "COORDINATOR_IDEMPOTENCY_WINDOW_S": "60",
            "COORDINATOR_STREAM_GRACE_S": "0",  # 0: tasks move at once
            "COORDINATOR_TASK_TIMER_INTERVAL_S": "0.1",
            "COORDINATOR_TASK_RETENTION_S": "3600",
        }
    )
    assert settings.max_task_data_bytes == 2048
    assert settings.idempotency_window_s == 60
    assert settings.stream_grace_s == 0
    assert settings.task_timer_interval_s == 0.1
    assert settings.task_retention_s == 3600


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("round_robin", "round_robin"),
        ("ROUND_ROBIN", "round_robin"),
        ("Weighted_Round_Robin", "weighted_round_robin"),
        (" consistent_hash ", "consistent_hash"),
    ],
)
def test_balancing_strategy_accepts_any_case(raw, stored):
    assert load_settings({"COORDINATOR_BALANCING_STRATEGY": raw}).balancing_strategy == stored


def test_unknown_balancing_strategy_lists_the_valid_ones():
    with pytest.raises(ConfigError) as caught:
        load_settings({"COORDINATOR_BALANCING_STRATEGY": "fastest"})
    message = str(caught.value)
    assert message.startswith("COORDINATOR_BALANCING_STRATEGY")
    assert "fastest" in message and "least_connections" in message


def test_max_task_data_leaves_64_kib_of_the_message_size():
    limit = 256 * 1024
    fits = load_settings(
        {
            "COORDINATOR_MAX_MESSAGE_BYTES": str(limit),
            "COORDINATOR_MAX_TASK_DATA_BYTES": str(limit - 65536),
        }
    )
    assert fits.max_task_data_bytes == limit - 65536
    with pytest.raises(ConfigError) as caught:
        load_settings(
            {
                "COORDINATOR_MAX_MESSAGE_BYTES": str(limit),
                "COORDINATOR_MAX_TASK_DATA_BYTES": str(limit - 65535),
            }
        )
    assert str(caught.value).startswith("COORDINATOR_MAX_TASK_DATA_BYTES")
    assert "COORDINATOR_MAX_MESSAGE_BYTES" in str(caught.value)
    # The default task data size (1 MiB) needs a message size above it.
    with pytest.raises(ConfigError, match=r"^COORDINATOR_MAX_TASK_DATA_BYTES"):
        load_settings({"COORDINATOR_MAX_MESSAGE_BYTES": str(1024 * 1024)})


def test_missing_env_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="--env-file"):
        load_settings({}, tmp_path / "absent.env")


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("0.0.0.0", "0.0.0.0:9001"),
        ("::", "[::]:9001"),
        ("[::1]", "[::1]:9001"),
        ("node-a.lan", "node-a.lan:9001"),
    ],
)
def test_bind_address_brackets_bare_ipv6(host, address):
    # INSECURE: these addresses are not loopback and no authentication is configured.
    env = {"COORDINATOR_HOST": host, "COORDINATOR_INSECURE": "true"}
    assert load_settings(env).address == address
