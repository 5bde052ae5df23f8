"""Configuration: defaults, the env file, and errors that name the variable."""

import pytest

from coordinator.config import DEFAULT_AGENT_TYPES, ConfigError, Settings, load_settings


def test_defaults_match_the_old_service():
    settings = load_settings({})
    assert settings.redis_url == "redis://localhost:6379/1"
    assert not settings.redis_url_explicit
    assert settings.port == 9001
    assert settings.host == "0.0.0.0"
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
    ],
)
def test_bad_values_fail_naming_the_variable(env, variable):
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert str(caught.value).startswith(variable)


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
    assert load_settings({"COORDINATOR_HOST": host}).address == address
