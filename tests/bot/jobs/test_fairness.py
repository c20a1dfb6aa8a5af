from bot.jobs.fairness import FairQueue, QueuedJob


def test_round_robin_across_users_and_order_matches_pop():
    q = FairQueue()
    for user in (1, 2, 3):
        for i in range(10):
            q.push(QueuedJob(f"u{user}-{i}", user))
    predicted = [j.job_id for j in q.order()]
    popped = []
    while (job := q.pop()) is not None:
        popped.append(job.job_id)
    assert popped == predicted
    # Within any window of three consecutive jobs, each user appears once.
    for k in range(0, 30, 3):
        assert {p.split("-")[0] for p in popped[k : k + 3]} == {"u1", "u2", "u3"}


def test_priority_tier_goes_first_and_remove_and_position():
    q = FairQueue()
    q.push(QueuedJob("a", 1))
    q.push(QueuedJob("b", 1))
    q.push(QueuedJob("vip", 2, priority=1))
    assert q.position("vip") == 1
    assert q.position("b") == 3
    assert q.remove("a") is not None
    assert q.position("b") == 2
    q.push(QueuedJob("b", 1))  # idempotent
    assert len(q) == 2
    assert [q.pop().job_id, q.pop().job_id] == ["vip", "b"]
    assert q.pop() is None
