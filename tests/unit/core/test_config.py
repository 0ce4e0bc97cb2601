"""Settings loading: YAML sections, the shared tracing section, env overrides, errors."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from sluice.core.config import CONFIG_ENV, ConfigError, load_settings, read_config_file
from sluice.limiter.settings import LimiterSettings
from sluice.provider.settings import ProviderSettings
from sluice.router.settings import RouterSettings
from sluice.telemetry.settings import TelemetrySettings

SUITE_YAML = """
tracing:
  endpoint: collector.internal:4317
  sample_ratio: 0.5
router:
  server: {port: 6000, metrics_port: 6001}
  tracing: {sample_ratio: 0.25}
  limiter_timeout_ms: 100
limiter:
  server: {port: 6002, metrics_port: 6003}
  per_key: {capacity: 10, refill_per_second: 2}
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SLUICE_* variable from the outer environment may leak into these tests."""
    for name in list(os.environ):
        if name.startswith("SLUICE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def suite_file(tmp_path: Path) -> Path:
    path = tmp_path / "sluice.yaml"
    path.write_text(SUITE_YAML, encoding="utf-8")
    return path


def test_service_section_and_shared_tracing_are_merged(suite_file: Path) -> None:
    router = load_settings(RouterSettings, "router", path=suite_file)

    assert (router.server.port, router.server.metrics_port) == (6000, 6001)
    assert router.limiter_timeout_ms == 100
    # Shared section supplies what the service section does not set...
    assert router.tracing.endpoint == "collector.internal:4317"
    # ...and the service's own section wins where both set a value.
    assert router.tracing.sample_ratio == 0.25
    # Untouched fields keep their defaults.
    assert router.tracing.export_delay_ms == 500
    assert router.max_messages == 256


def test_other_sections_do_not_leak_between_services(suite_file: Path) -> None:
    limiter = load_settings(LimiterSettings, "limiter", path=suite_file)

    assert limiter.server.port == 6002
    assert limiter.per_key.capacity == 10.0
    assert limiter.per_key.refill_per_second == 2.0
    assert limiter.tracing.sample_ratio == 0.5  # the shared value, not the router's 0.25
    assert limiter.tracing.endpoint == "collector.internal:4317"


def test_service_without_a_section_gets_defaults_plus_shared_tracing(suite_file: Path) -> None:
    telemetry = load_settings(TelemetrySettings, "telemetry", path=suite_file)

    assert telemetry.server.port == 4317
    assert telemetry.max_traces == 10_000
    assert telemetry.tracing.endpoint == "collector.internal:4317"


def test_config_path_comes_from_sluice_config_env(
    suite_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(suite_file))

    assert load_settings(RouterSettings, "router").server.port == 6000


def test_no_file_at_all_means_defaults() -> None:
    assert read_config_file(None) == {}
    provider = load_settings(ProviderSettings, "provider")
    assert provider.server.port == 50053
    assert list(provider.backends) == ["simulated"]


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")

    assert load_settings(RouterSettings, "router", path=empty).server.port == 50051


def test_env_overrides_nested_yaml_field(suite_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_ROUTER_SERVER__PORT", "7000")
    monkeypatch.setenv("SLUICE_ROUTER_TRACING__ENABLED", "false")

    router = load_settings(RouterSettings, "router", path=suite_file)

    assert router.server.port == 7000
    assert router.server.metrics_port == 6001  # the sibling from YAML survives
    assert router.tracing.enabled is False
    assert router.tracing.endpoint == "collector.internal:4317"


def test_env_override_applies_only_to_its_own_service(
    suite_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLUICE_ROUTER_SERVER__PORT", "7000")

    assert load_settings(LimiterSettings, "limiter", path=suite_file).server.port == 6002


def test_env_override_of_one_server_field_keeps_the_other_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No YAML at all: the operator only moves the gRPC port.
    monkeypatch.setenv("SLUICE_ROUTER_SERVER__PORT", "7000")

    router = load_settings(RouterSettings, "router", data={})

    assert router.server.port == 7000
    assert router.server.metrics_port == 9101


def test_yaml_server_section_may_set_only_some_fields() -> None:
    router = load_settings(RouterSettings, "router", data={"router": {"server": {"port": 6000}}})

    assert router.server.port == 6000
    assert router.server.metrics_port == 9101


def test_explicit_overrides_beat_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The module's documented precedence: explicit keyword arguments first, then env.
    monkeypatch.setenv("SLUICE_ROUTER_LIMITER_TIMEOUT_MS", "900")

    router = load_settings(RouterSettings, "router", data={}, overrides={"limiter_timeout_ms": 5})

    assert router.limiter_timeout_ms == 5


def test_explicit_overrides_beat_yaml(suite_file: Path) -> None:
    router = load_settings(
        RouterSettings, "router", path=suite_file, overrides={"server": {"port": 0}}
    )

    assert router.server.port == 0
    assert router.server.metrics_port == 6001


@pytest.mark.parametrize(
    ("env_value", "fragment"),
    [("not-a-port", "valid integer"), ("70000", "less than or equal to 65535")],
)
def test_bad_env_value_names_the_dotted_field(
    suite_file: Path, monkeypatch: pytest.MonkeyPatch, env_value: str, fragment: str
) -> None:
    monkeypatch.setenv("SLUICE_ROUTER_SERVER__PORT", env_value)

    with pytest.raises(ConfigError) as caught:
        load_settings(RouterSettings, "router", path=suite_file)

    message = str(caught.value)
    assert "router.server.port" in message
    assert fragment in message
    assert env_value in message


@pytest.mark.parametrize(
    ("section", "dotted"),
    [
        ({"server": {"port": -1, "metrics_port": 1}}, "router.server.port"),
        ({"tracing": {"sample_ratio": 2}}, "router.tracing.sample_ratio"),
        ({"tracing": {"export_delay_ms": 1}}, "router.tracing.export_delay_ms"),
        ({"log_level": "LOUD"}, "router.log_level"),
        ({"limiter_timeout_ms": 0}, "router.limiter_timeout_ms"),
        ({"no_such_field": 1}, "router.no_such_field"),
        ({"models": {"default": {"backends": []}}}, "router.models.default.backends"),
    ],
)
def test_bad_yaml_value_names_the_dotted_field(section: dict[str, object], dotted: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(RouterSettings, "router", data={"router": section})

    assert dotted in str(caught.value)


def test_bad_shared_tracing_value_is_reported_under_the_service() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(LimiterSettings, "limiter", data={"tracing": {"sample_ratio": -0.5}})

    assert "limiter.tracing.sample_ratio" in str(caught.value)


def test_every_bad_field_is_reported_at_once() -> None:
    data = {"router": {"server": {"port": -1, "metrics_port": 99999}}}

    with pytest.raises(ConfigError) as caught:
        load_settings(RouterSettings, "router", data=data)

    assert "router.server.port" in str(caught.value)
    assert "router.server.metrics_port" in str(caught.value)


def test_missing_file_raises_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"

    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(RouterSettings, "router", path=missing)


def test_directory_instead_of_file_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        read_config_file(tmp_path)


def test_invalid_yaml_raises_config_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("router: {server: [unclosed\n", encoding="utf-8")

    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(RouterSettings, "router", path=broken)


def test_non_utf8_file_raises_config_error(tmp_path: Path) -> None:
    garbled = tmp_path / "garbled.yaml"
    garbled.write_bytes(b"router:\n  log_level: \xff\xfe\n")

    with pytest.raises(ConfigError, match=re.escape(str(garbled))):
        read_config_file(garbled)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    listing = tmp_path / "list.yaml"
    listing.write_text("- router\n- limiter\n", encoding="utf-8")

    with pytest.raises(ConfigError, match="mapping of sections"):
        read_config_file(listing)


def test_section_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match="'router' must be a mapping"):
        load_settings(RouterSettings, "router", data={"router": ["port", 1]})
