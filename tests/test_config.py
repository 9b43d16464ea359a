from __future__ import annotations

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
