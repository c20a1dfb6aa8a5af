"""The real JobManager and database with a scripted transport: the order jobs reach the engine."""

import asyncio

import pytest

from bot.db import Database, Job
from bot.db.jobs import JobStore
from bot.jobs.manager import JobManager
from tests.bot.jobrows import new_job
from tests.bot.jobs.scripted import ScriptedTransport
from tests.waiting import wait_until


@pytest.fixture
async def world(tmp_path):
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}")
    await db.migrate()
    transport = ScriptedTransport(slots=0)
    manager = JobManager(JobStore(db.sessions), transport, tmp_path / "images")
    await manager.start()
    yield manager, transport
    await manager.close()
    await db.close()


def job(user_id: int, priority: int = 0, guild_id: int | None = 1) -> Job:
    return new_job(
        user_id=user_id, priority=priority, guild_id=guild_id, channel_id=2, prompt=f"from {user_id}"
    )


async def run_one_at_a_time(manager, transport, total):
    """Open one engine slot and finish each dispatched job in turn; the dispatch order comes back."""
    transport.open(1)
    # A slot opened without an engine event: nudge the manager as a worker's next event would.
    await manager._dispatch()
    for n in range(total):
        await wait_until(lambda: bool(transport.inflight), f"job {n + 1} of {total} to reach the engine")
        transport.finish(next(iter(transport.inflight)))
    await wait_until(lambda: not manager.active_jobs(), "every job to finish")
    return [r.prompt for r in transport.submitted]


async def test_three_users_with_ten_jobs_each_take_turns(world):
    manager, transport = world
    # Alice queues all ten first, then Bob, then Carol: arrival order alone would serve Alice ten times.
    for user in (1, 2, 3):
        for _ in range(10):
            await manager.submit(job(user))
    assert manager.position(manager.active_jobs()[1].id) == 2
    order = await run_one_at_a_time(manager, transport, 30)
    assert len(order) == 30
    for turn in range(10):
        assert sorted(order[turn * 3 : turn * 3 + 3]) == ["from 1", "from 2", "from 3"], order
    # The order of one user's own jobs is kept.
    ids = [r.job_id for r in transport.submitted if r.prompt == "from 1"]
    assert ids == [
        j.id
        for j in sorted(
            (await asyncio.gather(*(manager.store.get(i) for i in ids))), key=lambda j: j.created_at
        )
    ]


async def test_a_latecomer_is_served_before_the_hog_finishes(world):
    manager, transport = world
    for _ in range(10):
        await manager.submit(job(1))
    await manager.submit(job(2))
    order = await run_one_at_a_time(manager, transport, 11)
    assert order.index("from 2") <= 1


async def test_priority_roles_go_first_and_still_take_turns_among_themselves(world):
    manager, transport = world
    for _ in range(3):
        await manager.submit(job(1))
    for user in (2, 3):
        for _ in range(2):
            await manager.submit(job(user, priority=1))
    order = await run_one_at_a_time(manager, transport, 7)
    assert order[:4] in (["from 2", "from 3"] * 2, ["from 3", "from 2"] * 2)
    assert order[4:] == ["from 1"] * 3
