"""The bot-level fixtures (tiny model, settings, the running bot) from tests/bot, for the fault scenarios."""

from tests.bot.conftest import make_settings, run_bot, tiny_model

__all__ = ["make_settings", "run_bot", "tiny_model"]
