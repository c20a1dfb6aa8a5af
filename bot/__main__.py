"""``python -m bot``: read settings (.env), then run the bot until Ctrl-C."""

from __future__ import annotations

import asyncio
import logging
import sys

from bot.settings import Settings, SettingsError

TOKEN_HELP = (
    "DISCORD_TOKEN is not set. Create a bot at https://discord.com/developers/applications "
    "(New Application → Bot → Reset Token), then put DISCORD_TOKEN=<token> in .env (see .env.example)."
)


async def _run(settings: Settings) -> None:
    import discord

    from bot.client import ImagineBot, point_at

    point_at(settings)
    bot = ImagineBot(settings)
    async with bot:
        try:
            await bot.start(settings.discord_token.get())
        except discord.LoginFailure:
            logging.getLogger("bot").error(
                "Discord refused DISCORD_TOKEN; reset the token in the developer portal and update .env."
            )
            raise SystemExit(1) from None


def main() -> None:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        message = TOKEN_HELP if str(exc).startswith("DISCORD_TOKEN is not set") else f"Bad setting: {exc}"
        print(message, file=sys.stderr)
        raise SystemExit(2) from None
    from bot.logs import setup_logging

    setup_logging(settings.log_level, settings.discord_token.get())
    try:
        asyncio.run(_run(settings))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
