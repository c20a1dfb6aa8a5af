from pathlib import Path

import pytest

from bot.settings import SPECS, Secret, Settings, SettingsError

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_with_only_a_token():
    s = Settings.from_env({"DISCORD_TOKEN": "abc"}, env_file=None)
    assert s.discord_token.get() == "abc"
    assert s.discord_api_base == "https://discord.com/api/v10"
    assert s.database_url.startswith("sqlite+aiosqlite:///")
    assert s.guild_ids == ()
    assert s.device == "auto"


def test_missing_token_names_it():
    with pytest.raises(SettingsError, match=r"^DISCORD_TOKEN is not set"):
        Settings.from_env({}, env_file=None)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GUILD_IDS", "12,abc"),
        ("DEVICE", "tpu"),
        ("ENGINE_WORKERS", "0"),
        ("DISCORD_API_BASE", "ftp://x"),
        ("DEFAULT_SAMPLER", "Fast"),
        ("DEFAULT_CFG", "seven"),
        ("DEFAULT_SIZE", "500"),
        ("LOG_LEVEL", "LOUD"),
        ("ALLOW_PICKLE_CHECKPOINTS", "maybe"),
    ],
)
def test_bad_value_names_the_setting(name, value):
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"DISCORD_TOKEN": "abc", name: value}, env_file=None)
    assert str(err.value).startswith(name)
    assert "\n" not in str(err.value)


def test_env_file_is_read_and_environment_wins(tmp_path):
    env = tmp_path / ".env"
    env.write_text("DISCORD_TOKEN=fromfile\nGUILD_IDS=1, 2\nLOG_LEVEL=debug\n")
    s = Settings.from_env({"LOG_LEVEL": "WARNING"}, env_file=env)
    assert s.discord_token.get() == "fromfile"
    assert s.guild_ids == (1, 2)
    assert s.log_level == "WARNING"


def test_plain_database_urls_get_the_async_drivers_and_other_kinds_are_refused_redacted():
    def url(value: str) -> str:
        return Settings.from_env({"DISCORD_TOKEN": "t", "DATABASE_URL": value}, env_file=None).database_url

    assert url("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"
    assert url("postgresql://u:pw@h/db") == "postgresql+asyncpg://u:pw@h/db"
    assert url("postgres://u@h:5433/db") == "postgresql+asyncpg://u@h:5433/db"
    assert url("postgresql+asyncpg://u@h/db") == "postgresql+asyncpg://u@h/db"
    for bad in ("mysql+aiomysql://u:s3cret@h/db", "u:s3cret@h/db"):
        with pytest.raises(SettingsError, match=r"^DATABASE_URL: expected") as refused:
            url(bad)
        assert "s3cret" not in str(refused.value)
    assert "s3cret" not in repr(
        Settings.from_env({"DISCORD_TOKEN": "t", "DATABASE_URL": "postgresql://u:s3cret@h/db"}, env_file=None)
    )


def test_token_never_prints():
    s = Settings.from_env({"DISCORD_TOKEN": "supersecret"}, env_file=None)
    assert "supersecret" not in repr(s)
    assert "supersecret" not in str(Secret("supersecret"))
    assert "supersecret" not in f"{s.discord_token}"


def test_env_example_lists_every_setting_with_a_comment():
    lines = (ROOT / ".env.example").read_text().splitlines()
    for spec in SPECS:
        idx = next((i for i, line in enumerate(lines) if line.startswith(spec.name + "=")), None)
        assert idx is not None, f"{spec.name} missing from .env.example"
        assert lines[idx - 1].startswith("#"), f"{spec.name} has no comment in .env.example"
        if spec.default is not None:
            assert lines[idx] == f"{spec.name}={spec.default}", f"{spec.name} default differs"


def test_metrics_port_is_off_by_default_and_bound_to_this_machine():
    s = Settings.from_env({"DISCORD_TOKEN": "abc"}, env_file=None)
    off = (s.metrics_port, s.metrics_host, s.health_max_wait, s.log_format)
    assert off == (None, "127.0.0.1", 600, "text")
    s = Settings.from_env(
        {"DISCORD_TOKEN": "abc", "METRICS_PORT": "9100", "METRICS_HOST": "0.0.0.0", "LOG_FORMAT": "JSON"},
        env_file=None,
    )
    assert (s.metrics_port, s.metrics_host, s.log_format) == (9100, "0.0.0.0", "json")
    for name, value in [("METRICS_PORT", "70000"), ("METRICS_PORT", "web"), ("METRICS_HOST", "a b"),
                        ("LOG_FORMAT", "xml"), ("HEALTH_MAX_WAIT", "0")]:  # fmt: skip
        with pytest.raises(SettingsError, match=rf"^{name}: "):
            Settings.from_env({"DISCORD_TOKEN": "abc", name: value}, env_file=None)
