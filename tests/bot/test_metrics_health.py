"""METRICS_PORT: /metrics and /healthz of the real bot on the loopback Discord, scraped over HTTP while a
small load fills and drains the queue (a scripted engine holds the jobs until the test lets them run)."""

from __future__ import annotations

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fakediscord.plugin import make_world
from tests.bot.answers import settled
from tests.bot.botprocess import query
from tests.bot.jobs.scripted import ScriptedTransport, scripted_bot, scripted_settings
from tests.waiting import wait_until


class Workers(ScriptedTransport):
    """A scripted engine whose number of ready workers the test sets."""

    workers = 1

    def worker_count(self) -> int:
        return self.workers


def value(text: str, name: str, **labels: str) -> float:
    """The sample ``name{labels}`` in a scrape; 0 when absent (a labelled counter never touched)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


class Port:
    def __init__(self, http: aiohttp.ClientSession, port: int, secret: str) -> None:
        self.http, self.base, self.secret = http, f"http://127.0.0.1:{port}", secret
        self.scrapes = 0

    async def metrics(self) -> str:
        async with self.http.get(self.base + "/metrics") as response:
            assert response.status == 200
            text = await response.text()
        assert self.secret not in text
        self.scrapes += 1
        return text

    async def health(self) -> tuple[int, dict]:
        async with self.http.get(self.base + "/healthz") as response:
            return response.status, await response.json()


@pytest.fixture
def world(fake_discord):
    return make_world(fake_discord)


async def test_scrapes_follow_the_queue_and_health_follows_gateway_workers_and_waits(world, tmp_path):
    fake = world.fake
    settings = scripted_settings(fake, tmp_path, GUILD_IDS=world.guild.id, METRICS_PORT=0, HEALTH_MAX_WAIT=1)
    transport = Workers(slots=0)
    guild = str(world.guild.id)
    async with scripted_bot(fake, settings, transport) as bot, aiohttp.ClientSession() as http:
        assert bot.health is not None and bot.health.port
        port = Port(http, bot.health.port, fake.token)
        status, body = await port.health()
        assert (status, body["ok"], body["problems"]) == (200, True, [])
        first = await port.metrics()
        assert value(first, "imagine_jobs_finished_total", state="done") == 0
        assert value(first, "imagine_engine_workers_alive") == 1
        assert value(first, "imagine_gateway_connected") == 1

        # The load: three jobs, and the engine takes none of them yet.
        for _ in range(3):
            inter = await fake.invoke(
                "imagine", {"prompt": "a kite", "count": 1}, guild=world.guild, channel=world.channel,
                user=world.member,
            )  # fmt: skip
            await settled(fake, inter)

        async def queued_three() -> bool:
            return value(await port.metrics(), "imagine_queue_depth", guild=guild) == 3

        await wait_until(queued_three, "three jobs queued in /metrics")
        full = await port.metrics()
        assert value(full, "imagine_jobs_active", state="queued", kind="txt2img") == 3
        assert value(full, "imagine_queue_oldest_seconds") > 0

        async def stale() -> bool:
            status, body = await port.health()
            return status == 503 and any("oldest queued job" in p for p in body["problems"])

        await wait_until(stale, "/healthz failing on a job queued longer than HEALTH_MAX_WAIT")

        # Discord refuses the results' posts meanwhile: REST errors by status, and a redelivery backlog.
        outage = fake.faults.outage("*", r"/webhooks/|/messages", status=503)
        transport.auto_finish = True
        transport.open(4)
        inter = await fake.invoke(  # a fourth job: the manager dispatches on it, and all four run
            "imagine", {"prompt": "a kite", "count": 1}, guild=world.guild, channel=world.channel,
            user=world.member,
        )  # fmt: skip

        async def drained() -> bool:
            text = await port.metrics()
            return (
                value(text, "imagine_queue_depth", guild=guild) == 0
                and value(text, "imagine_jobs_finished_total", state="done", kind="txt2img") == 4
            )

        await wait_until(drained, "the queue drained and four jobs done in /metrics")
        undelivered = lambda: query(  # noqa: E731
            tmp_path, "select count(*) from jobs where state = 'done' and delivered_at is null"
        )[0][0]
        await wait_until(lambda: undelivered() > 0, "a result Discord refused")
        after = await port.metrics()
        assert value(after, "imagine_images_total") == 4
        assert value(after, "imagine_queue_wait_seconds_count") == 4
        assert value(after, "imagine_engine_seconds_count") == 4
        assert value(after, "imagine_discord_rest_errors_total", status="503") >= 1
        assert value(after, "imagine_redelivery_backlog") == undelivered()
        outage.end()
        status, body = await port.health()
        assert (status, body["problems"]) == (200, [])

        transport.workers = 0
        status, body = await port.health()
        assert (status, body["problems"]) == (503, ["no engine worker is ready"])
        transport.workers = 1

        # A gateway outage: the bot is cut off and cannot reconnect until it ends.
        fake.refuse_gateway = True
        await fake.disconnect_bots()

        async def cut_off() -> bool:
            status, body = await port.health()
            return status == 503 and body["problems"] == ["the Discord gateway is disconnected"]

        await wait_until(cut_off, "/healthz failing while the gateway is down")
        assert value(await port.metrics(), "imagine_gateway_connected") == 0
        fake.refuse_gateway = False

        async def back() -> bool:
            return (await port.health())[0] == 200

        await wait_until(back, "/healthz healthy once the bot is back on the gateway")
        assert inter.deferred


async def test_a_result_announced_again_at_start_is_not_counted_again(world, tmp_path):
    fake = world.fake
    settings = scripted_settings(fake, tmp_path, GUILD_IDS=world.guild.id, METRICS_PORT=0)
    undelivered = lambda: query(  # noqa: E731
        tmp_path, "select count(*) from jobs where state = 'done' and delivered_at is null"
    )[0][0]
    outage = fake.faults.outage("*", r"/webhooks/|/messages", status=503)  # the result cannot be posted
    async with (
        scripted_bot(fake, settings, Workers(slots=1, auto_finish=True)) as bot,
        aiohttp.ClientSession() as http,
    ):
        port = Port(http, bot.health.port, fake.token)
        await fake.invoke(
            "imagine", {"prompt": "a kite", "count": 1}, guild=world.guild, channel=world.channel,
            user=world.member,
        )  # fmt: skip
        await wait_until(lambda: undelivered() == 1, "a finished result Discord refused")
        before = await port.metrics()
        assert value(before, "imagine_jobs_finished_total", state="done", kind="txt2img") == 1
        assert value(before, "imagine_redelivery_backlog") == 1
    outage.end()
    async with scripted_bot(fake, settings, Workers()) as bot, aiohttp.ClientSession() as http:
        port = Port(http, bot.health.port, fake.token)
        await wait_until(lambda: undelivered() == 0, "the result posted at the next start")
        after = await port.metrics()
        # Finished in the last run: not counted again in this one.
        assert value(after, "imagine_jobs_finished_total", state="done", kind="txt2img") == 0
        assert value(after, "imagine_images_total") == 0 and value(after, "imagine_redelivery_backlog") == 0
