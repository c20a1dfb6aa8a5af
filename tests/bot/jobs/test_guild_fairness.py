"""Guilds take turns: one guild's priority and queue depth never push another guild's jobs back."""

import random

from bot.jobs.fairness import FairQueue, QueuedJob
from tests.bot.jobs.test_fair_dispatch import job, run_one_at_a_time, world  # noqa: F401 (fixture)

A, B, C = 100, 200, 300


def drain(q: FairQueue) -> list[str]:
    out = []
    while (j := q.pop()) is not None:
        out.append(j.job_id)
    return out


def test_a_high_priority_guild_with_a_deep_queue_does_not_starve_another_guild():
    q = FairQueue()
    for i in range(20):  # guild A: priority 10, a deep queue, all queued before guild B asks
        q.push(QueuedJob(f"a{i}", 1, priority=10, guild_id=A))
    for i in range(3):
        q.push(QueuedJob(f"b{i}", 2, guild_id=B))
    order = [j.job_id for j in q.order()]
    assert order[:6] == ["a0", "b0", "a1", "b1", "a2", "b2"]
    assert q.position("b0") == 2
    assert drain(q) == order


def test_priority_orders_jobs_only_inside_its_own_guild():
    q = FairQueue()
    q.push(QueuedJob("a-plain-0", 1, guild_id=A))
    q.push(QueuedJob("a-plain-1", 1, guild_id=A))
    q.push(QueuedJob("a-vip-0", 2, priority=5, guild_id=A))
    q.push(QueuedJob("a-vip-1", 2, priority=5, guild_id=A))
    q.push(QueuedJob("b-0", 3, guild_id=B))
    q.push(QueuedJob("b-1", 3, guild_id=B))
    # A's VIP goes before A's other member, and guild B still gets every other turn.
    assert drain(q) == ["a-vip-0", "b-0", "a-vip-1", "b-1", "a-plain-0", "a-plain-1"]


def test_users_take_turns_inside_a_guild_while_guilds_take_turns():
    q = FairQueue()
    for i in range(2):
        q.push(QueuedJob(f"a1-{i}", 1, guild_id=A))
        q.push(QueuedJob(f"a2-{i}", 2, guild_id=A))
    for i in range(4):
        q.push(QueuedJob(f"b3-{i}", 3, guild_id=B))
    assert drain(q) == ["a1-0", "b3-0", "a2-0", "b3-1", "a1-1", "b3-2", "a2-1", "b3-3"]


def test_direct_messages_are_one_more_guild():
    q = FairQueue()
    for i in range(3):
        q.push(QueuedJob(f"a{i}", 1, priority=3, guild_id=A))
    q.push(QueuedJob("dm-5", 5, guild_id=None))
    q.push(QueuedJob("dm-6", 6, guild_id=None))
    assert drain(q) == ["a0", "dm-5", "a1", "dm-6", "a2"]


def test_cancelling_does_not_move_turns_and_a_failed_start_keeps_the_head():
    q = FairQueue()
    for g in (A, B, C):
        q.push(QueuedJob(f"{g}-0", g, guild_id=g))
        q.push(QueuedJob(f"{g}-1", g, guild_id=g))
    assert q.remove("200-0") is not None  # cancel: B keeps its place in line
    head = q.peek()
    assert head is not None and head.job_id == "100-0"
    assert q.peek() == head and len(q) == 5  # peeking takes nothing
    assert q.take(head.job_id) == head
    assert [j.job_id for j in q.order()] == ["200-1", "300-0", "100-1", "300-1"]


def test_order_always_matches_pop_under_random_pushes_takes_and_removes():
    rng = random.Random(1234)
    q = FairQueue()
    n = 0
    for _ in range(400):
        roll = rng.random()
        if roll < 0.55:
            guild = rng.choice([A, B, C, None])
            q.push(QueuedJob(f"j{n}", rng.randrange(4), priority=rng.choice([0, 0, 1, 10]), guild_id=guild))
            n += 1
        elif roll < 0.8 and len(q):
            predicted = q.order()[0]
            assert q.pop() == predicted
        elif len(q):
            victim = rng.choice(q.order())
            assert q.remove(victim.job_id) == victim
        predicted_ids = [j.job_id for j in q.order()]
        assert len(predicted_ids) == len(q)
    order = [j.job_id for j in q.order()]
    assert drain(q) == order


async def test_the_manager_serves_guilds_in_turn_whatever_their_priority(world):  # noqa: F811
    manager, transport = world
    # Guild A's admin gave its members priority 10 and a deep queue; guild B's member asks after.
    for _ in range(6):
        await manager.submit(job(1, priority=10, guild_id=A))
    await manager.submit(job(2, guild_id=B))
    await manager.submit(job(3, guild_id=None))
    order = await run_one_at_a_time(manager, transport, 8)
    assert order[:3] == ["from 1", "from 2", "from 3"], order
    assert order[3:] == ["from 1"] * 5
