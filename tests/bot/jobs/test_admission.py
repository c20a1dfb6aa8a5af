"""Admission against a real (temporary) SQLite, then PostgreSQL, database: bans, blocklist, quotas,
reservations."""

import asyncio
import contextlib
import dataclasses
import datetime as dt

import pytest

from bot.db import Database
from bot.db.jobs import JobStore, SavedImage
from bot.db.moderation import ModerationStore
from bot.jobs.admission import GUILD_ACTIVE_WINDOW, RESERVATION_TTL, Admission
from bot.jobs.limits import LimitName, Scope
from bot.jobs.policy import Defaults, Params, PolicyError
from bot.settings import Settings
from tests.bot.jobrows import new_job

GUILD, OTHER_GUILD, ADMIN = 1000, 2000, 1
NOON = dt.datetime(2026, 5, 4, 12, 0, tzinfo=dt.UTC)


@dataclasses.dataclass(frozen=True)
class Who:
    user_id: int = 42
    guild_id: int | None = GUILD
    role_ids: tuple[int, ...] = ()
    nsfw_channel: bool = False


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
async def env(database_url):  # each test on SQLite and on PostgreSQL (tests/pg.py)
    db = Database(database_url)
    await db.migrate()
    yield db
    await db.close()


def make(env, clock=None, **settings):
    values = {
        "DISCORD_TOKEN": "t",
        "DEFAULT_COOLDOWN_SECONDS": "0",
        **{k: str(v) for k, v in settings.items()},
    }
    store = ModerationStore(env.sessions)
    return Admission(store, Settings.from_env(values, env_file=None), clock=clock or Clock(NOON)), store


async def admit(admission, who=None, prompt="a cat", **params):
    return await admission.admit(who or Who(), Params(prompt=prompt, **params), Defaults(steps=20, count=1))


async def add_job(env, admitted, who=None, created=NOON, **kw):
    who = who or Who()
    fields = {"id": admitted.job_id} if admitted else {}
    job = new_job(
        **fields,
        guild_id=who.guild_id,
        channel_id=5,
        user_id=who.user_id,
        prompt="x",
        created_at=created,
        **kw,
    )
    await JobStore(env.sessions).create(job)
    return job


async def test_ban_is_checked_first_and_names_the_reason(env):
    admission, store = make(env)
    await store.ban(GUILD, 42, "spam", actor_id=ADMIN)
    with pytest.raises(PolicyError, match=r"banned .*\(spam\)"):
        await admit(admission)
    # The ban is per guild.
    assert await admit(admission, Who(guild_id=OTHER_GUILD))
    await store.unban(GUILD, 42, actor_id=ADMIN)
    assert await admit(admission)


async def test_rules_read_once_are_refreshed_by_every_admin_change(env):
    # Admission keeps each guild's rules in memory; every change through the store must show at once.
    admission, store = make(env, DEFAULT_QUEUED_JOBS=50)
    assert await admit(admission, steps=30)  # rules now cached
    await store.ban(GUILD, 42, "spam", actor_id=ADMIN)
    with pytest.raises(PolicyError, match="banned"):
        await admit(admission)
    await store.unban(GUILD, 42, actor_id=ADMIN)
    assert await admit(admission)
    await store.add_term(GUILD, "gore", actor_id=ADMIN)
    with pytest.raises(PolicyError, match="blocklist"):
        await admit(admission, prompt="gore")
    await store.remove_term(GUILD, "gore", actor_id=ADMIN)
    assert await admit(admission, prompt="gore")
    await store.set_limit(GUILD, Scope.GUILD, GUILD, LimitName.MAX_STEPS, 10, actor_id=ADMIN)
    with pytest.raises(PolicyError, match="between 1 and 10"):
        await admit(admission, steps=30)
    await store.reset_limit(GUILD, Scope.GUILD, GUILD, LimitName.MAX_STEPS, actor_id=ADMIN)
    assert await admit(admission, steps=30)


class PausingSessions:
    """The real session factory, except that the next plain session pauses as it closes (its reads done)
    until ``go`` is set: a deterministic "a write lands while a read is in flight"."""

    def __init__(self, real):
        self.real = real
        self.pause_next = False
        self.paused, self.go = asyncio.Event(), asyncio.Event()

    def __call__(self):
        if not self.pause_next:
            return self.real()
        self.pause_next = False
        return self._paused(self.real())

    def begin(self):
        return self.real.begin()

    @contextlib.asynccontextmanager
    async def _paused(self, session):
        async with session:
            yield session
            self.paused.set()
            await self.go.wait()


async def test_a_rules_read_racing_a_change_is_not_kept(env):
    _, store = make(env)
    store.sessions = sessions = PausingSessions(store.sessions)
    sessions.pause_next = True
    read = asyncio.create_task(store.rules(GUILD, 42))
    await sessions.paused.wait()  # the read has the old rules (no ban) in hand
    await store.ban(GUILD, 42, "spam", actor_id=ADMIN)
    sessions.go.set()
    assert (await read).ban is None  # it answers with what it read...
    assert (await store.rules(GUILD, 42)).ban is not None  # ...but does not keep it


async def test_blocked_terms_in_prompt_and_negative_even_disguised(env):
    admission, store = make(env)
    await store.add_term(GUILD, "gore", actor_id=ADMIN)
    await store.add_term(GUILD, "/blood(y|bath)/", actor_id=ADMIN)
    for prompt in ("lots of ＧＯＲＥ", "g\u200bоre and more", "gōre"):
        with pytest.raises(PolicyError, match=r"Your prompt contains `gore`"):
            await admit(admission, prompt=prompt)
    with pytest.raises(PolicyError, match=r"negative prompt contains `bloody`"):
        await admit(admission, prompt="a cat", negative="BLOODY")
    assert await admit(admission, prompt="a gorilla")
    assert await admit(admission, Who(guild_id=OTHER_GUILD), prompt="gore")  # other guild, other list


async def test_queued_jobs_counts_rows_and_reservations(env):
    admission, _ = make(env, DEFAULT_QUEUED_JOBS=2)
    first = await admit(admission)
    await add_job(env, first)
    await admit(admission)  # second: reserved, not yet a row
    with pytest.raises(PolicyError, match=r"2 jobs queued or running; the most here is 2 \(`queued_jobs`\)"):
        await admit(admission)
    assert await admit(admission, Who(user_id=43))  # per user


async def test_two_simultaneous_commands_cannot_both_pass_a_quota(env):
    admission, _ = make(env, DEFAULT_QUEUED_JOBS=1)
    results = await asyncio.gather(*(admit(admission) for _ in range(5)), return_exceptions=True)
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert all(isinstance(r, PolicyError) for r in results if isinstance(r, Exception))


async def test_a_reservation_that_never_became_a_job_expires(env):
    clock = Clock(NOON)
    admission, _ = make(env, clock, DEFAULT_QUEUED_JOBS=1)
    await admit(admission)
    with pytest.raises(PolicyError, match="queued_jobs"):
        await admit(admission)
    clock.now = NOON + RESERVATION_TTL
    assert await admit(admission)


async def test_cooldown_says_when_to_come_back(env):
    clock = Clock(NOON)
    admission, _ = make(env, clock, DEFAULT_COOLDOWN_SECONDS=60)
    await add_job(env, await admit(admission))
    clock.now = NOON + dt.timedelta(seconds=45)
    with pytest.raises(PolicyError, match=r"wait 15 s .*`cooldown_seconds` = 60.*12:01:00 UTC"):
        await admit(admission)
    clock.now = NOON + dt.timedelta(seconds=60)
    assert await admit(admission)


async def test_daily_quota_counts_finished_and_queued_images_and_names_the_reset(env):
    admission, _ = make(env, DEFAULT_DAILY_IMAGES=6)
    jobs = JobStore(env.sessions)
    yesterday = await add_job(env, None, count=4, created=NOON - dt.timedelta(days=1))
    await jobs.finish(yesterday.id, [SavedImage(i, i, f"/x{i}", 64, 64) for i in range(4)], 1.0, "m")
    async with env.sessions.begin() as s:  # finished yesterday: does not count today
        from sqlalchemy import update

        from bot.db.models import Usage

        await s.execute(update(Usage).values(created_at=NOON - dt.timedelta(days=1)))
    done = await add_job(env, await admit(admission, count=3), count=3)
    await jobs.finish(done.id, [SavedImage(i, i, f"/y{i}", 64, 64) for i in range(3)], 1.0, "m")
    await add_job(env, await admit(admission, count=2), count=2)  # queued: counts too
    with pytest.raises(PolicyError, match=r"you have 1 of 6 left today .*`--count 1`.*00:00 UTC"):
        await admit(admission, count=2)
    await add_job(env, await admit(admission, count=1))
    with pytest.raises(PolicyError) as err:
        await admit(admission, count=1)
    reset = int(dt.datetime(2026, 5, 5, tzinfo=dt.UTC).timestamp())
    assert "`daily_images` = 6" in str(err.value) and f"<t:{reset}:R>" in str(err.value)


async def test_role_override_beats_guild_and_gives_priority(env):
    admission, store = make(env)
    await store.set_limit(GUILD, Scope.GUILD, GUILD, LimitName.MAX_STEPS, 10, actor_id=ADMIN)
    await store.set_limit(GUILD, Scope.ROLE, 77, LimitName.MAX_STEPS, 40, actor_id=ADMIN)
    await store.set_limit(GUILD, Scope.ROLE, 77, LimitName.PRIORITY, 2, actor_id=ADMIN)
    with pytest.raises(PolicyError, match="between 1 and 10"):
        await admit(admission, steps=30)
    vip = await admit(admission, Who(role_ids=(77,)), steps=30)
    assert (vip.resolved.steps, vip.priority, vip.limits.max_steps) == (30, 2, 40)
    # A bare request under a lower max_steps gets the limit as its default instead of a refusal.
    plain = await admit(admission, Who(user_id=7))
    assert plain.resolved.steps == 10 and plain.priority == 0


async def test_img2img_switch_and_pixels(env):
    admission, store = make(env)
    await store.set_limit(GUILD, Scope.USER, 42, LimitName.ALLOW_IMG2IMG, 0, actor_id=ADMIN)
    with pytest.raises(PolicyError, match="allow_img2img"):
        await admission.admit(Who(), Params(prompt="cat"), Defaults(count=1), kind="img2img")
    with pytest.raises(PolicyError, match="max_pixels"):
        await admission.admit(
            Who(user_id=5), Params(prompt="cat"), Defaults(count=1), kind="upscale", size=(2048, 2048)
        )


async def test_global_queue_cap(env):
    admission, _ = make(env, QUEUE_CAP=2)
    await add_job(env, None, Who(user_id=1))
    await add_job(env, None, Who(user_id=2))
    with pytest.raises(PolicyError, match="queue is full"):
        await admit(admission)


async def test_a_guild_alone_may_fill_the_queue(env):
    admission, _ = make(env, QUEUE_CAP=3)
    await add_job(env, None, Who(user_id=1))
    await add_job(env, None, Who(user_id=2))
    assert await admit(admission)  # the only guild using the bot: its share is the whole cap


async def test_one_guild_cannot_take_another_guilds_share_of_the_queue(env):
    admission, _ = make(env, QUEUE_CAP=4)
    for user in (1, 2):
        await add_job(env, None, Who(user_id=user))
    # Guild B asks: two guilds now, a share of 2 each; B has none queued.
    assert await admit(admission, Who(user_id=7, guild_id=OTHER_GUILD))
    # Guild A already holds its 2 although the queue has room (2 of 4 places used).
    with pytest.raises(
        PolicyError, match=r"This server's share of the queue is full \(2 jobs waiting; 4 places"
    ):
        await admit(admission, Who(user_id=3))


async def test_a_guild_refused_by_a_full_queue_gets_the_next_free_place(env):
    clock = Clock(NOON)
    admission, _ = make(env, clock, QUEUE_CAP=4)
    hog = [await add_job(env, None, Who(user_id=u)) for u in (1, 2, 3, 4)]  # guild A fills the queue
    newcomer = Who(user_id=9, guild_id=OTHER_GUILD)
    with pytest.raises(PolicyError, match="queue is full"):
        await admit(admission, newcomer)
    # One of A's jobs starts: a place frees. A asks first, but the refused guild counts: A (3 queued) is
    # over its share of 2, so the place stays for the newcomer.
    await JobStore(env.sessions).start_attempt(hog[0].id)
    with pytest.raises(PolicyError, match="share of the queue is full"):
        await admit(admission, Who(user_id=5))
    assert await admit(admission, newcomer)
    # A minute after the newcomer last asked, with nothing of it queued, guild A alone may fill the queue.
    clock.now = NOON + GUILD_ACTIVE_WINDOW + dt.timedelta(seconds=1)
    assert await admit(admission, Who(user_id=5))


async def test_direct_messages_share_the_queue_as_one_guild(env):
    admission, _ = make(env, QUEUE_CAP=2)
    await add_job(env, None, Who(user_id=1, guild_id=None))
    assert await admit(admission)  # guild A asks: two "guilds", a share of 1 each
    with pytest.raises(PolicyError, match="The direct messages' share of the queue is full"):
        await admit(admission, Who(user_id=2, guild_id=None))


async def test_safety_check_only_outside_nsfw_channels_and_only_when_configured(env):
    admission, _ = make(env, SAFETY_CHECKER="CompVis/stable-diffusion-safety-checker")
    assert (await admit(admission)).safety_check is True
    assert (await admit(admission, Who(user_id=3, nsfw_channel=True))).safety_check is False
    plain, _ = make(env)
    assert (await admit(plain, Who(user_id=4))).safety_check is False


async def test_direct_messages_use_the_defaults(env):
    admission, _ = make(env)
    admitted = await admit(admission, Who(guild_id=None))
    assert admitted.limits.max_steps == 50 and admitted.priority == 0


async def test_admin_changes_are_audited_with_old_and_new(env):
    _, store = make(env)
    assert await store.set_limit(GUILD, "role", 5, "daily_images", 10, actor_id=ADMIN) is None
    assert await store.set_limit(GUILD, "role", 5, "daily_images", 20, actor_id=ADMIN) == 10
    assert await store.reset_limit(GUILD, "role", 5, "daily_images", actor_id=ADMIN) == 20
    assert (
        await store.reset_limit(GUILD, "role", 5, "daily_images", actor_id=ADMIN) is None
    )  # no-op: no entry
    log = await store.audit_log(GUILD)
    assert [(e.action, e.old_value, e.new_value) for e in reversed(log)] == [
        ("limits.set", None, "10"),
        ("limits.set", "10", "20"),
        ("limits.reset", "20", None),
    ]
    assert all(e.actor_id == ADMIN and e.target == "role:5 daily_images" for e in log)
    assert await store.audit_log(OTHER_GUILD) == []
