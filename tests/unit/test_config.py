"""`keyturn serve --help` documents every setting; the environment overrides the file; flags win."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from keyturn.cli import app
from keyturn.config import ConfigError, LedgerSettings, Settings, load_settings


def test_serve_help_lists_every_setting_with_its_environment_variable() -> None:
    shown = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    for name in Settings.model_fields:
        assert f"KEYTURN_{name.upper()}" in shown, name
    for name in LedgerSettings.model_fields:
        assert f"ledger.{name} (KEYTURN_LEDGER__{name.upper()}" in shown, name


def test_precedence_file_then_environment_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "keyturn.yaml"
    config.write_text("port: 9000\nhost: 0.0.0.0\nledger: {origin: from.file/ledger, checkpoint_every: 7}\n")
    monkeypatch.setenv("KEYTURN_PORT", "9100")
    monkeypatch.setenv("KEYTURN_LEDGER__ORIGIN", "from.env/ledger")
    settings = load_settings(config, host="127.0.0.2")
    assert settings.port == 9100 and settings.host == "127.0.0.2"
    assert settings.ledger.origin == "from.env/ledger" and settings.ledger.checkpoint_every == 7


def test_a_bad_setting_names_the_file_and_the_key(tmp_path: Path) -> None:
    config = tmp_path / "keyturn.yaml"
    config.write_text("port: lots\nledger: {checkpoint_every: 0}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    message = str(caught.value)
    assert str(config) in message and "port" in message and "ledger.checkpoint_every" in message
