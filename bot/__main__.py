"""``python -m bot``: read settings (.env), then run the bot until Ctrl-C or SIGTERM (exit status 0; 1 for
a bad token or a crash, 2 for bad settings or a local engine that is not installed, 3 when shutdown overran
its bound (bot/shutdown.py), 130 for a second Ctrl-C, which leaves at once).

``python -m bot migrate-db ...`` and ``python -m bot backup ...`` are the database's subcommands
(bot/db/commands.py)."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import signal
import sys
from pathlib import Path

from bot.settings import Settings, SettingsError

TOKEN_HELP = (
    "DISCORD_TOKEN is not set. Create a bot at https://discord.com/developers/applications "
    "(New Application → Bot → Reset Token), then put DISCORD_TOKEN=<token> in .env (see .env.example)."
)

ENGINE_HELP = (
    "ENGINE_TRANSPORT=local runs the engine on this machine, and this install has no engine: "
    "pip install -e '.[engine]' adds it (torch, diffusers, ...). "
    "So does ENGINE_PYTHON=/path/to/python of another venv that has it. "
    "A bot whose GPUs are NATS workers sets ENGINE_TRANSPORT=nats instead (README: More GPUs)."
)
ENGINE_PACKAGES = ("torch", "diffusers", "transformers")


def engine_installed() -> bool:
    """Whether engine workers can run here (the ``engine`` extra), found without importing it."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in ENGINE_PACKAGES)
    except (ImportError, ValueError):
        return False


def engine_python_problem(engine_python: str) -> str | None:
    """Why local engine workers cannot start, or None. With ``ENGINE_PYTHON`` the engine is that Python's
    (a venv with CUDA torch, say) and this install may be the bot alone."""
    if not engine_python:
        return None if engine_installed() else ENGINE_HELP
    path = Path(engine_python)
    if not (path.is_file() and os.access(path, os.X_OK)):
        return f"ENGINE_PYTHON={engine_python} is not an executable file (give the full path of a python)"
    return None


async def _run(settings: Settings) -> int:
    """Run the bot until SIGINT (Ctrl-C) or SIGTERM, then stop it within bot/shutdown.py's bounds."""
    import discord

    from bot import shutdown
    from bot.client import ImagineBot, point_at

    log = logging.getLogger("bot")
    point_at(settings)
    bot = ImagineBot(settings)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    watchdog = shutdown.Watchdog()

    def on_signal(signum: int) -> None:
        if stop.is_set():  # a second Ctrl-C: the user does not want to wait for the phases
            log.warning("%s again: leaving now", signal.Signals(signum).name)
            shutdown.force_exit(130)
        log.info("%s: shutting down", signal.Signals(signum).name)
        watchdog.arm()  # from here on the process ends within PROCESS_LIMIT, whatever hangs
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    running = asyncio.create_task(bot.start(settings.discord_token.get()), name="discord")
    stopping = asyncio.create_task(stop.wait(), name="stop-signal")
    try:
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watchdog.arm()
        stopping.cancel()
        await bot.close()
        # bot.start returns once the client is closed; a stuck connect must not hold the exit.
        if not running.done():
            await asyncio.wait({running}, timeout=shutdown.DISCORD_LIMIT)
            running.cancel()
    if running.done() and not running.cancelled() and running.exception() is not None:
        if isinstance(running.exception(), discord.LoginFailure):
            log.error(
                "Discord refused DISCORD_TOKEN; reset the token in the developer portal and update .env."
            )
            return 1
        log.error("the bot stopped on an error", exc_info=running.exception())
        return 1
    return 0


def main() -> None:
    from bot.db import commands as db_commands

    if sys.argv[1:2] and sys.argv[1] in db_commands.COMMANDS:  # python -m bot migrate-db | backup ...
        raise SystemExit(db_commands.main(sys.argv[1:]))
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        message = TOKEN_HELP if str(exc).startswith("DISCORD_TOKEN is not set") else f"Bad setting: {exc}"
        print(message, file=sys.stderr)
        raise SystemExit(2) from None
    if settings.engine_transport == "local":
        problem = engine_python_problem(settings.engine_python)
        if problem:
            print(problem, file=sys.stderr)
            raise SystemExit(2)
    from bot.db import urls as database_urls
    from bot.logs import setup_logging

    auth = settings.nats_auth
    setup_logging(
        settings.log_level,
        settings.discord_token.get(),
        auth.password,
        auth.token,
        database_urls.password(settings.database_url),
        fmt=settings.log_format,
    )
    code = asyncio.run(_run(settings))
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
