"""The TLS settings: checked at start-up, each refusal naming its variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.config import ConfigError, Settings, load_settings
from tls_support import Pki


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki.create(tmp_path / "pki")


def tls_env(pki: Pki, **extra: str) -> dict[str, str]:
    return {
        "COORDINATOR_TLS_CERT_FILE": str(pki.cert_file),
        "COORDINATOR_TLS_KEY_FILE": str(pki.key_file),
        **extra,
    }


def refusal(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    return str(caught.value)


def test_no_tls_by_default():
    settings = load_settings({})
    assert not settings.tls_enabled
    assert not settings.client_certs_required
    assert not Settings().client_certs_required


def test_tls_and_mtls_settings(pki: Pki):
    settings = load_settings(tls_env(pki))
    assert settings.tls_enabled and not settings.client_certs_required
    mtls = load_settings(tls_env(pki, COORDINATOR_TLS_CLIENT_CA_FILE=str(pki.ca_file)))
    assert mtls.client_certs_required
    explicit = tls_env(
        pki,
        COORDINATOR_TLS_CLIENT_CA_FILE=str(pki.ca_file),
        COORDINATOR_TLS_REQUIRE_CLIENT_CERT="TRUE",
    )
    assert load_settings(explicit).client_certs_required


def test_missing_file_names_the_variable(pki: Pki, tmp_path: Path):
    message = refusal(tls_env(pki, COORDINATOR_TLS_CERT_FILE=str(tmp_path / "nope.pem")))
    assert message.startswith("COORDINATOR_TLS_CERT_FILE: cannot read the file")


def test_a_file_that_is_not_pem_names_the_variable(pki: Pki, tmp_path: Path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    assert refusal(tls_env(pki, COORDINATOR_TLS_CERT_FILE=str(junk))).startswith(
        "COORDINATOR_TLS_CERT_FILE: "
    )
    assert refusal(tls_env(pki, COORDINATOR_TLS_KEY_FILE=str(junk))).startswith(
        "COORDINATOR_TLS_KEY_FILE: "
    )
    # A certificate where the key belongs, and the other way round.
    assert refusal(tls_env(pki, COORDINATOR_TLS_KEY_FILE=str(pki.cert_file))).startswith(
        "COORDINATOR_TLS_KEY_FILE: "
    )
    assert refusal(tls_env(pki, COORDINATOR_TLS_CLIENT_CA_FILE=str(pki.key_file))).startswith(
        "COORDINATOR_TLS_CLIENT_CA_FILE: "
    )


def test_key_of_another_certificate_is_refused(pki: Pki, tmp_path: Path):
    other = Pki.create(tmp_path / "other")
    message = refusal(tls_env(pki, COORDINATOR_TLS_KEY_FILE=str(other.key_file)))
    assert message.startswith("COORDINATOR_TLS_KEY_FILE: ")
    assert "does not belong to the certificate" in message


def test_cert_and_key_go_together(pki: Pki):
    only_cert = {"COORDINATOR_TLS_CERT_FILE": str(pki.cert_file)}
    assert refusal(only_cert).startswith("COORDINATOR_TLS_KEY_FILE: ")
    only_key = {"COORDINATOR_TLS_KEY_FILE": str(pki.key_file)}
    assert refusal(only_key).startswith("COORDINATOR_TLS_CERT_FILE: ")


def test_client_ca_needs_tls(pki: Pki):
    message = refusal({"COORDINATOR_TLS_CLIENT_CA_FILE": str(pki.ca_file)})
    assert message.startswith("COORDINATOR_TLS_CLIENT_CA_FILE: needs TLS")


def test_require_client_cert_needs_a_client_ca(pki: Pki):
    message = refusal(tls_env(pki, COORDINATOR_TLS_REQUIRE_CLIENT_CERT="true"))
    assert message.startswith("COORDINATOR_TLS_REQUIRE_CLIENT_CERT: needs")


def test_optional_client_certificates_are_refused(pki: Pki):
    env = tls_env(
        pki,
        COORDINATOR_TLS_CLIENT_CA_FILE=str(pki.ca_file),
        COORDINATOR_TLS_REQUIRE_CLIENT_CERT="false",
    )
    assert refusal(env).startswith("COORDINATOR_TLS_REQUIRE_CLIENT_CERT: false is not supported")


def test_bad_boolean_names_the_variable(pki: Pki):
    env = tls_env(
        pki,
        COORDINATOR_TLS_CLIENT_CA_FILE=str(pki.ca_file),
        COORDINATOR_TLS_REQUIRE_CLIENT_CERT="maybe",
    )
    assert refusal(env).startswith("COORDINATOR_TLS_REQUIRE_CLIENT_CERT: ")
