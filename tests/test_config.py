from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from reports_service.config import Settings, SettingsError


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.database_url == "sqlite+aiosqlite:///reports.db"
    assert settings.auth_timeout == 10.0
    assert settings.max_message_bytes == 65536


def test_values_from_environment() -> None:
    settings = Settings.from_env(
        {"REPORTS_AUTH_TIMEOUT": "2.5", "REPORTS_PORT": "9000", "OTHER": "x"}
    )
    assert settings.auth_timeout == 2.5
    assert settings.port == 9000


@pytest.mark.parametrize(
    ("name", "value"), [("REPORTS_PORT", "eighty"), ("REPORTS_AUTH_TIMEOUT", "-1")]
)
def test_bad_values_fail_with_the_variable_named(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_every_setting_is_documented() -> None:
    for env, _default, doc in Settings.describe():
        assert env.startswith("REPORTS_")
        assert doc


def test_password_is_masked() -> None:
    settings = Settings(database_url="postgresql+asyncpg://u:secret@h/db")
    assert "secret" not in settings.masked_database_url()


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for env, default, _doc in Settings.describe():
        assert f"| `{env}` | `{default}` |" in readme, f"README lacks {env}"


@pytest.mark.parametrize(("name", "value"), [("log_level", "LOUD"), ("log_format", "xml")])
def test_bad_log_settings(name: str, value: str) -> None:
    with pytest.raises(SettingsError):
        Settings(**{name: value})  # type: ignore[arg-type]


NUMBERS = [f for f in dataclasses.fields(Settings) if isinstance(f.default, int | float)]


@pytest.mark.parametrize("name", [f.name for f in NUMBERS])
def test_every_number_has_a_range(name: str) -> None:
    assert Settings.problem(name, -1) is not None
    assert Settings.problem(name, math.inf) == "must be a finite number"
    assert Settings.problem(name, getattr(Settings(), name)) is None


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("REPORTS_PORT", "99999", "REPORTS_PORT=99999: must be between 1 and 65535"),
        ("REPORTS_PORT", "0", "REPORTS_PORT=0: must be between 1 and 65535"),
        ("REPORTS_WORKERS", "0", "REPORTS_WORKERS=0: must be at least 1"),
        ("REPORTS_POOL_SIZE", "0", "REPORTS_POOL_SIZE=0: must be at least 1"),
        ("REPORTS_AUTH_TIMEOUT", "0", "REPORTS_AUTH_TIMEOUT=0.0: must be more than 0"),
        ("REPORTS_FEED_INTERVAL", "-0.5", "REPORTS_FEED_INTERVAL=-0.5: must be more than 0"),
        ("REPORTS_CACHE_MB", "-1", "REPORTS_CACHE_MB=-1.0: must be at least 0"),
        ("REPORTS_SEND_TIMEOUT", "nan", "REPORTS_SEND_TIMEOUT=nan: must be a finite number"),
    ],
)
def test_out_of_range_names_the_variable_and_the_range(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({name: value})
    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("name", "value"),
    [("port", 65535), ("port", 1), ("cache_mb", 0), ("rate_limit", 0), ("shutdown_grace", 0)],
)
def test_range_edges_are_allowed(name: str, value: int) -> None:
    assert getattr(Settings(**{name: value}), name) == value  # type: ignore[arg-type]
