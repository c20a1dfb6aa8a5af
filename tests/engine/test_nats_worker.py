"""`python -m engine serve` against a real nats-server: the tiny diffusion model end to end, large bodies
through the object store, the load-simulation runner, and a job that keeps killing its workers."""

# ruff: noqa: F811  (the nats fixtures are imported below, then named as test parameters)
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator

import nats
import pytest
from nats.js.errors import NotFoundError

from bot.transport.nats import NatsTransport
from engine.nats_layout import HEADER_MSG_ID, HEADER_OBJECT, MAX_OBJECT_BYTES, BlobError, Layout, pack, unpack
from engine.nats_worker import NatsWorker
from engine.pnginfo import read_png_parameters
from engine.protocol import (
    GenerateRequest,
    JobCancelled,
    JobDone,
    JobFailed,
    JobProgress,
    Submit,
    WorkerReady,
    encode,
)
from engine.simulate import SimulatedRunner, simulated_png
from tests.bot.transport.conftest import (  # noqa: F401  (fixtures shared with the transport tests)
    nats_namespace,
    nats_server,
    spawn_worker,
    worker_logs,
)


async def next_of(events: AsyncIterator[object], kind: type, seconds: float = 30) -> object:
    async def find() -> object:
        async for event in events:
            if isinstance(event, kind):
                return event
        raise AssertionError("event stream ended")

    return await asyncio.wait_for(find(), seconds)


@contextlib.asynccontextmanager
async def in_process_worker(worker: NatsWorker) -> AsyncIterator[NatsWorker]:
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.request_stop()
        assert await asyncio.wait_for(task, 20) == 0


async def stored_objects(url: str, namespace: str) -> list[str]:
    nc = await nats.connect(url)
    try:
        store = await nc.jetstream().object_store(Layout(namespace).bucket)
        try:
            return [info.name for info in await store.list(ignore_deletes=True)]
        except NotFoundError:
            return []
    finally:
        await nc.close()


class Deletions:
    def __init__(self) -> None:
        self.count = 0
        self.changed = asyncio.Condition()

    async def wait_for(self, count: int) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: self.count >= count)


@contextlib.asynccontextmanager
async def object_deletions(url: str, namespace: str) -> AsyncIterator[Deletions]:
    """Counts objects deleted from the namespace's bucket, as they happen: a deletion is a metadata message
    marked deleted on the bucket's ``$O.<bucket>.M.*`` subjects."""
    deletions = Deletions()
    nc = await nats.connect(url)

    async def on_meta(msg) -> None:
        if json.loads(msg.data).get("deleted"):
            async with deletions.changed:
                deletions.count += 1
                deletions.changed.notify_all()

    await nc.subscribe(f"$O.{Layout(namespace).bucket}.M.*", cb=on_meta)
    try:
        yield deletions
    finally:
        await nc.close()


async def test_objects_over_the_cap_links_and_foreign_names_are_never_read(nats_server, nats_namespace):
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        store = await Layout(nats_namespace).ensure(js)
        await store.put("results/j/w", b"x" * 2000)
        await store.put("elsewhere", b"y")
        # A link, as a NATS client that has them writes it (nats-py cannot): metadata naming another object.
        bucket = Layout(nats_namespace).bucket
        link = {"name": "results/link/w", "bucket": bucket, "nuid": "x", "size": 0, "chunks": 0,
                "options": {"link": {"bucket": "another-bucket", "name": "secret"}}}  # fmt: skip
        encoded = base64.urlsafe_b64encode(b"results/link/w").decode()
        await js.publish(
            f"$O.{bucket}.M.{encoded}", json.dumps(link).encode(), headers={"Nats-Rollup": "sub"}
        )

        async def read(name: str, cap: int = MAX_OBJECT_BYTES) -> bytes:
            body, _ = await unpack(store, b"", {HEADER_OBJECT: name}, cap)
            return body

        assert await read("results/j/w") == b"x" * 2000
        with pytest.raises(BlobError, match="2000 bytes"):
            await read("results/j/w", cap=1000)
        with pytest.raises(BlobError, match="link"):
            await read("results/link/w")
        with pytest.raises(BlobError, match="not one of ours"):
            await read("elsewhere")
        # What a worker cannot send whole, it does not try to (the bot would refuse it).
        with pytest.raises(BlobError, match="over the object limit"):
            await pack(store, "results/big/w", b"\0" * (MAX_OBJECT_BYTES + 1), 1024, {})
    finally:
        await nc.close()


async def test_tiny_model_worker_serves_a_job(nats_server, nats_namespace, spawn_worker, tiny_model):
    worker = spawn_worker(
        nats_server.url,
        nats_namespace,
        "gpu0",
        "--model",
        str(tiny_model),
        "--device",
        "cpu",
        "--max-batch",
        "2",
    )
    transport = NatsTransport(nats_server.url, namespace=nats_namespace, lease_seconds=10)
    await transport.start()
    events = transport.events()
    try:
        ready = await next_of(events, WorkerReady, 120)
        assert ready.worker_id == "gpu0" and ready.max_batch == 2 and transport.free_slots() == 4  # images
        await transport.submit(
            GenerateRequest(
                "tiny1", "a lighthouse", seed=7, steps=2, width=64, height=64, count=2, sampler="Euler"
            )
        )
        progress = await next_of(events, JobProgress)
        assert progress.job_id == "tiny1" and progress.total == 2
        done = await next_of(events, JobDone, 60)
        assert done.job_id == "tiny1" and done.worker_id == "gpu0"
        assert [i.seed for i in done.images] == [7, 8]
        params = read_png_parameters(done.images[0].png)
        assert params is not None and "a lighthouse" in params and "Seed: 7" in params
    except BaseException:
        print(worker_logs([worker]))
        raise
    finally:
        await transport.close()


async def test_bodies_over_the_limit_go_through_the_object_store(nats_server, nats_namespace):
    # Tiny inline limits on both sides: the init image goes out, and the PNGs come back, as objects.
    runner = SimulatedRunner(0.01, max_batch=2, worker_id="sim")
    worker = NatsWorker(
        runner, nats_server.url, namespace=nats_namespace, inline_limit=64, heartbeat_seconds=0.2
    )
    transport = NatsTransport(nats_server.url, namespace=nats_namespace, lease_seconds=5, inline_limit=64)
    await transport.start()
    events = transport.events()
    try:
        async with in_process_worker(worker), object_deletions(nats_server.url, nats_namespace) as deleted:
            await next_of(events, WorkerReady)
            init = simulated_png(GenerateRequest("x", "init", width=256, height=256), 3)
            request = GenerateRequest("big1", "a boat", kind="img2img", init_image=init, steps=3, width=256,
                                      height=256, count=2, seed=11)  # fmt: skip
            await transport.submit(request)
            assert await stored_objects(nats_server.url, nats_namespace) == ["requests/big1"]
            done = await next_of(events, JobDone)
            assert done.job_id == "big1" and [i.seed for i in done.images] == [11, 12]
            assert all(i.png.startswith(b"\x89PNG") for i in done.images)
            # The request's object goes once its result is in; asking for the next event says "handled":
            # the transport acks the result and deletes its object.
            handled = asyncio.ensure_future(anext(events, None))
            await asyncio.wait_for(deleted.wait_for(2), 15)
            assert await stored_objects(nats_server.url, nats_namespace) == []
    finally:
        await transport.close()
    assert await asyncio.wait_for(handled, 5) is None


async def test_a_job_that_keeps_killing_workers_fails_with_a_reason(nats_server, nats_namespace):
    layout = Layout(nats_namespace)
    transport = NatsTransport(nats_server.url, namespace=nats_namespace, lease_seconds=1)
    await transport.start()
    events = transport.events()
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await layout.ensure(js, lease=1)
        await js.publish(layout.jobs_subject, encode(Submit(GenerateRequest("poison", "x", steps=2, width=64,
                         height=64))), headers={HEADER_MSG_ID: "poison"})  # fmt: skip
        # A "worker" takes it and dies (never acks): the lease lapses and it is delivered again.
        psub = await js.pull_subscribe_bind(durable=layout.workers_consumer, stream=layout.jobs_stream)
        (first,) = await psub.fetch(1, timeout=5)
        assert first.metadata.num_delivered == 1
        await psub.unsubscribe()
        worker = NatsWorker(
            SimulatedRunner(0.01, worker_id="sim"),
            nats_server.url,
            namespace=nats_namespace,
            max_deliveries=1,
        )
        async with in_process_worker(worker):
            failed = await next_of(events, JobFailed, 15)
        assert failed.job_id == "poison" and not failed.retryable
        assert "crash the engine" in failed.reason
    finally:
        await nc.close()
        await transport.close()


async def test_a_cancel_heard_before_the_job_arrives_is_remembered(nats_server, nats_namespace):
    transport = NatsTransport(nats_server.url, namespace=nats_namespace, lease_seconds=5)
    await transport.start()
    events = transport.events()
    worker = NatsWorker(SimulatedRunner(0.01, worker_id="sim"), nats_server.url, namespace=nats_namespace,
                        slots=1, heartbeat_seconds=0.2)  # fmt: skip
    try:
        async with in_process_worker(worker):
            await next_of(events, WorkerReady)
            await transport.submit(GenerateRequest("long", "x", steps=100, width=64, height=64))
            await transport.submit(GenerateRequest("later", "x", steps=2, width=64, height=64))
            await transport.cancel("later")  # still in the stream: the worker's only slot is busy
            await transport.cancel("long")
            ended = {}
            while len(ended) < 2:
                event = await next_of(events, JobCancelled | JobDone, 15)
                ended[event.job_id] = type(event)
        assert ended == {"long": JobCancelled, "later": JobCancelled}
    finally:
        await transport.close()


@pytest.mark.parametrize("size", [(64, 64), (512, 320)])
def test_simulated_pngs_are_valid(size):
    import io

    from PIL import Image

    width, height = size
    png = simulated_png(GenerateRequest("p", "a cat", width=width, height=height, steps=3), 42)
    with Image.open(io.BytesIO(png)) as img:
        img.load()
        assert img.size == size and img.mode == "RGB"
    assert "Seed: 42" in (read_png_parameters(png) or "")
