"""The bot-only install: ``pip install .`` without extras is the bot alone (no torch), and a bot whose
engines are NATS workers runs on it, as an operator runs it (JSON logs, metrics and health). The engine stack
is kept out of the bot's process by a meta-path finder that refuses to import it, as a machine without it
would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import aiohttp
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from prometheus_client.parser import text_string_to_metric_families

from tests.bot.botprocess import bot_env
from tests.bot.transport.conftest import nats_namespace, nats_server, spawn_worker  # noqa: F401 - fixtures
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
ENGINE_STACK = {"torch", "diffusers", "transformers", "accelerate", "peft", "safetensors"}

# Runs first in the bot's process: importing any of the engine stack fails as if it were not installed.
BLOCKER = f"""
import sys
BLOCKED = {sorted(ENGINE_STACK)!r}
class NoEngine:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: a bot-only install)", name=name)
        return None
sys.meta_path.insert(0, NoEngine())
import runpy
runpy.run_module("bot", run_name="__main__", alter_sys=True)
"""


def install_set(requirements: list[str], extras: frozenset[str] = frozenset()) -> set[str]:
    """The distributions that installing ``requirements`` brings: their closure over what is installed here
    (each requirement's own requirements, with the extras asked for), by canonical name."""
    seen: set[str] = set()
    todo = [(Requirement(r), extras) for r in requirements]
    while todo:
        req, wanted = todo.pop()
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in wanted or {""}):
            continue
        name = canonicalize_name(req.name)
        key = name + "[" + ",".join(sorted(req.extras)) + "]"
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue  # not installed here, so nothing of it can be walked (a platform-only dependency)
        todo += [(Requirement(r), frozenset(req.extras)) for r in dist.requires or []]
    return {k.split("[")[0] for k in seen}


def test_the_base_install_is_the_bot_without_torch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = install_set(project["dependencies"])
    assert not base & ENGINE_STACK, sorted(base & ENGINE_STACK)
    assert {"discord-py", "sqlalchemy", "nats-py", "prometheus-client", "matplotlib", "pillow"} <= base
    # The walk sees torch where it is: the engine extra brings the engine stack (and dev brings the engine).
    engine = install_set(project["optional-dependencies"]["engine"])
    assert ENGINE_STACK <= engine
    assert "torch==2.13.0" in project["optional-dependencies"]["engine"]
    assert any(Requirement(r).name == "imaginebot" and "engine" in Requirement(r).extras
               for r in project["optional-dependencies"]["dev"])  # fmt: skip


async def test_a_local_engine_needs_the_engine_extra(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "ENGINE_"))}
    env.update(PYTHONPATH=str(ROOT), DISCORD_TOKEN="x", ENGINE_TRANSPORT="local")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", BLOCKER, cwd=tmp_path, env=env, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert "pip install -e '.[engine]'" in err.decode() and "ENGINE_TRANSPORT=nats" in err.decode()


async def test_a_bad_engine_python_is_one_clear_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "ENGINE_"))}
    env.update(PYTHONPATH=str(ROOT), DISCORD_TOKEN="x", ENGINE_PYTHON=str(tmp_path / "no-python"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", cwd=tmp_path, env=env, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert err.decode().strip().splitlines() == [
        f"ENGINE_PYTHON={tmp_path / 'no-python'} is not an executable file (give the full path of a python)"
    ]


async def test_a_bot_only_install_runs_local_workers_with_another_python(fake_discord, tiny_model, tmp_path):
    # The bot's process cannot import torch; its workers run on ENGINE_PYTHON, which has the engine.
    fake = fake_discord
    guild = fake.add_guild("Bot Host")
    channel = fake.add_channel(guild, "art")
    alice = fake.add_user("alice")
    fake.add_member(guild, alice)
    env = bot_env(
        fake, tmp_path, tiny_model, guild.id
    )  # its ENGINE_PYTHON: this Python (tests/enginefork.py)
    env.update(ENGINE_TRANSPORT="local")
    bot = await asyncio.create_subprocess_exec(
        sys.executable, "-c", BLOCKER, cwd=tmp_path, env=env, start_new_session=True,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await fake.wait_until(lambda: fake.commands_for(guild) and fake.connected, timeout=60)
        inter = await fake.invoke(
            "imagine", {"prompt": "a lighthouse"}, guild=guild, channel=channel, user=alice
        )
        message = await fake.wait_for_message(
            lambda m: (
                m.interaction_id == inter.id and any(a.filename.endswith(".png") for a in m.attachments)
            ),
            timeout=120,
        )
        assert message.attachments[0].data.startswith(b"\x89PNG")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(bot.pid, signal.SIGKILL)
        await bot.wait()


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


async def test_a_nats_bot_without_the_engine_stack_serves_imagine_and_metrics(
    fake_discord,
    nats_server,  # noqa: F811
    nats_namespace,  # noqa: F811
    spawn_worker,  # noqa: F811
    tmp_path,
):
    fake = fake_discord
    guild = fake.add_guild("Bot Host")
    channel = fake.add_channel(guild, "art")
    alice = fake.add_user("alice")
    fake.add_member(guild, alice)
    env = bot_env(fake, tmp_path, Path("unused"), guild.id)
    env.update(
        ENGINE_TRANSPORT="nats", NATS_URL=nats_server.url, NATS_NAMESPACE=nats_namespace, METRICS_PORT="0",
        LOG_FORMAT="json",
    )  # fmt: skip
    bot = await asyncio.create_subprocess_exec(
        sys.executable, "-c", BLOCKER, cwd=tmp_path, env=env, start_new_session=True,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    log: list[str] = []

    async def read() -> None:
        assert bot.stderr is not None
        async for raw in bot.stderr:
            log.append(raw.decode(errors="replace").rstrip())

    reader = asyncio.create_task(read())

    def logged(pattern: str) -> re.Match[str] | None:
        return next((m for line in log if (m := re.search(pattern, line))), None)

    try:
        await wait_until(lambda: logged("logged in as") or bot.returncode is not None, "the bot's login")
        assert bot.returncode is None, "\n".join(log)
        port_line = logged(r"metrics on http://127\.0\.0\.1:(\d+)/metrics")
        assert port_line, "\n".join(log)
        base = f"http://127.0.0.1:{port_line.group(1)}"
        async with aiohttp.ClientSession() as http:

            async def health() -> tuple[int, dict]:
                async with http.get(base + "/healthz") as r:
                    return r.status, await r.json()

            status, body = await health()
            assert status == 503 and body["problems"] == ["no engine worker is ready"]

            worker = spawn_worker(nats_server.url, nats_namespace, "w0", "--simulate-seconds-per-step",
                                  "0.01", "--metrics-port", "0")  # fmt: skip
            await wait_until(lambda: "metrics on http" in worker.log.read_text(), "the worker's metrics port")
            worker_port = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/", worker.log.read_text())
            assert worker_port
            await wait_until(lambda: _healthy(health), "/healthz healthy once a worker beats")

            inter = await fake.invoke("imagine", {"prompt": "a kite", "count": 2}, guild=guild,
                                      channel=channel, user=alice)  # fmt: skip
            await fake.wait_for_message(
                lambda m: (
                    m.interaction_id == inter.id and any(a.filename.endswith(".png") for a in m.attachments)
                ),
                timeout=60,
            )

            async with http.get(base + "/metrics") as r:
                scrape = await r.text()
            assert sample(scrape, "imagine_jobs_finished_total", state="done", kind="txt2img") == 1
            assert sample(scrape, "imagine_engine_workers_alive") == 1
            assert fake.token not in scrape
            async with http.get(f"http://127.0.0.1:{worker_port.group(1)}/metrics") as r:
                engine = await r.text()
            assert sample(engine, "imagine_engine_batch_images_count") >= 1
            assert sample(engine, "imagine_engine_batch_images_sum") == 2
            # One batch of the job's two images, DEFAULT_STEPS=2 (bot_env) steps each.
            assert sample(engine, "imagine_engine_steps_total") == 2
            assert sample(engine, "imagine_engine_image_steps_total") == 4
            assert "imagine_engine_gpu_memory_bytes" not in engine  # no CUDA here: absent, not zero
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(bot.pid, signal.SIGINT)
        code = await asyncio.wait_for(bot.wait(), 60)
        await asyncio.wait({reader}, timeout=5)
    assert code == 0, "\n".join(log[-40:])
    assert not [line for line in log if "blocked: a bot-only install" in line]
    records = [json.loads(line) for line in log]  # LOG_FORMAT=json: every line is one object
    assert any(r["logger"] == "bot.client" and r["message"].startswith("logged in as") for r in records)
    assert all({"time", "level", "logger", "message", "exc"} <= set(r) for r in records)
    assert fake.token not in "\n".join(log)


async def _healthy(health) -> bool:
    return (await health())[0] == 200
