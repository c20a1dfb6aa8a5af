"""A Transport that runs nothing: it records what the JobManager dispatched, in order, and finishes jobs
when the test says so (or at once). Lets tests drive the real JobManager and database deterministically."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator

from PIL import Image

from engine.protocol import Event, GenerateRequest, ImageResult, JobCancelled, JobDone, JobFailed

_CLOSED = object()


def tiny_png(width: int = 8, height: int = 8) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 100, 50)).save(out, format="PNG")
    return out.getvalue()


class ScriptedTransport:
    def __init__(self, slots: int = 0, *, auto_finish: bool = False, nsfw: set[int] | None = None) -> None:
        self.slots = slots
        self.auto_finish = auto_finish
        self.nsfw = nsfw or set()  # image indexes the "safety checker" flags when a job asks for checking
        self.submitted: list[GenerateRequest] = []
        # Results the manager asked past, in order: NatsTransport acknowledges a result at that moment.
        self.acked: list[str] = []
        self.inflight: dict[str, GenerateRequest] = {}
        self._events: asyncio.Queue[object] = asyncio.Queue()

    async def start(self) -> None:
        pass

    def free_slots(self) -> int:
        return max(0, self.slots - len(self.inflight))

    def accepts(self, model: str | None) -> bool:
        return self.free_slots() > 0

    def worker_count(self) -> int:
        return 1

    async def submit(self, request: GenerateRequest) -> None:
        self.submitted.append(request)
        self.inflight[request.job_id] = request
        if self.auto_finish:
            self.finish(request.job_id)

    async def cancel(self, job_id: str) -> None:
        if self.inflight.pop(job_id, None) is not None:
            self._events.put_nowait(JobCancelled(job_id))

    def finish(self, job_id: str, seconds: float = 0.5) -> None:
        request = self.inflight.pop(job_id)
        images = [
            ImageResult(i, request.seed + i, tiny_png(), nsfw=request.safety_check and i in self.nsfw)
            for i in range(request.count)
        ]
        self._events.put_nowait(JobDone(job_id, images, seconds, "scripted"))

    def emit(self, event: Event) -> None:
        """Deliver ``event`` as a worker would (a progress step, say)."""
        self._events.put_nowait(event)

    def open(self, slots: int) -> None:
        """Let the manager dispatch up to ``slots`` jobs at once (it notices on its next event)."""
        self.slots = slots

    async def events(self) -> AsyncIterator[Event]:
        while True:
            item = await self._events.get()
            if item is _CLOSED:
                return
            yield item  # type: ignore[misc]
            if isinstance(item, JobDone | JobFailed | JobCancelled):
                self.acked.append(item.job_id)

    async def close(self) -> None:
        self._events.put_nowait(_CLOSED)


def scripted_settings(fake, tmp_path, **overrides):
    """Settings for a bot logged into ``fake`` whose engine is a ScriptedTransport (no model needed)."""
    from bot.settings import Settings

    env = {
        "DISCORD_TOKEN": fake.token,
        "DISCORD_API_BASE": fake.api_base,
        "DISCORD_GATEWAY_URL": fake.gateway_url,
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}",
        "OUTPUT_DIR": str(tmp_path / "images"),
        "MODEL": "scripted",
        "DEVICE": "cpu",
        "DEFAULT_SIZE": "64",
        "DEFAULT_STEPS": "2",
        "PREVIEW_EVERY": "0",
    }
    env.update({k: str(v) for k, v in overrides.items()})
    return Settings.from_env(env, env_file=None)


@contextlib.asynccontextmanager
async def scripted_bot(fake, settings, transport: ScriptedTransport):
    """The real ImagineBot, logged into ``fake``, with ``transport`` as its engine."""
    from bot.client import ImagineBot
    from fakediscord.plugin import connected_client

    bot = ImagineBot(settings, transport=transport)
    async with connected_client(fake, bot, timeout=30) as client:
        yield client
