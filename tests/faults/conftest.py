"""The bot-level fixtures (settings, the running bot) from tests/bot, for the fault scenarios; the tiny
model is the session one of tests/conftest.py."""

from tests.bot.conftest import make_settings, run_bot

__all__ = ["make_settings", "run_bot"]
