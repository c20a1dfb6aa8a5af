"""What a member was told by a command that acknowledges before its network or database work.

/imagine defers publicly ("thinking…") before downloading a picture or asking the database, so a refusal
found after that arrives as: the public "thinking…" deleted, then a private (ephemeral) followup
(bot/cogs/imagine/_cog.py). A refusal found before the defer is still the private response itself. These
helpers read both the same way, so tests say "refused privately" or "went ahead" without caring which."""

from __future__ import annotations

from typing import Any


def _notes(inter: Any) -> list[Any]:
    return [m for m in inter.followups if m.ephemeral and not m.deleted]


def _settled(inter: Any) -> bool:
    if not inter.callbacks or not inter.deferred or inter.original is None:
        return True  # answered directly (or too late): nothing more will come
    if inter.original.deleted:
        return bool(_notes(inter))
    return not inter.original.loading


async def settled(fake: Any, inter: Any, timeout: float = 60.0) -> Any:  # noqa: ASYNC109
    """Wait until the bot has answered ``inter`` for good: a direct response, a defer filled in (the job
    went ahead), or a defer withdrawn with a private note (refused). Returns ``inter``. ``timeout`` is a
    liveness bound, generous: /usage and /stats draw a chart first (matplotlib's first import in a process
    takes seconds on a loaded machine)."""
    await inter.wait_response(timeout)
    await fake.wait_until(lambda: _settled(inter), timeout)
    return inter


def refusal(inter: Any) -> str | None:
    """The private note the member got instead of a job; None when the command went ahead."""
    if inter.callbacks and inter.callbacks[0].get("type") == 4 and inter.ephemeral:
        return (inter.callbacks[0].get("data") or {}).get("content", "")
    if inter.deferred and inter.original is not None and inter.original.deleted:
        notes = _notes(inter)
        return notes[0].content if notes else None
    return None


def went_ahead(inter: Any) -> bool:
    """Deferred publicly and kept: the job's message is in the channel."""
    return (
        inter.deferred
        and not inter.ephemeral
        and inter.original is not None
        and not inter.original.deleted
        and not inter.late
    )


def answer(inter: Any) -> str:
    """The text the member was finally shown: a direct response, a defer filled in by the bot, or the
    private note after a withdrawn defer (call :func:`settled` first)."""
    note = refusal(inter)
    if note is not None:
        return note
    if inter.deferred:
        return inter.original.content if inter.original is not None else ""
    return (inter.callbacks[0].get("data") or {}).get("content", "") if inter.callbacks else ""
