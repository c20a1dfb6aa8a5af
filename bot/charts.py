"""The PNG chart /stats and /usage attach: images per day over the last 30 days, the top users, and the load
by hour of the day (UTC). The numbers stay in the message's text for screen readers; this is a picture of
them.

matplotlib takes a second or more to import, so it is imported here, inside :func:`render`, which
:func:`draw` runs on a thread of its own (never on the event loop, and never on the loop's shared thread
pool, which saves pictures and matches blocklist regexes: a burst of /stats waits in this one's queue).
Only the object API and the Agg canvas are used: no pyplot, no global figure state. Names come from
members: drawn as plain text (``parse_math=False``: a ``$`` starts no TeX), cut short.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from bot.db.usage import Activity

WIDTH, HEIGHT, DPI = 9.0, 7.5, 100  # inches at DPI: 900 x 750 pixels, well under Discord's upload limit
NAME_CHARS = 22
# One chart at a time: rendering is CPU work, and a burst of /stats must not take every core.
_DRAWER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="charts")


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    value: int


async def draw(title: str, activity: Activity, top: Sequence[Bar] = ()) -> bytes:
    """:func:`render` on the charts' thread. Cancelled while it waits its turn, it is never drawn."""
    return await asyncio.get_running_loop().run_in_executor(_DRAWER, render, title, activity, top)


def render(title: str, activity: Activity, top: Sequence[Bar] = ()) -> bytes:
    """The chart as PNG bytes: two panels (days, hours), three with ``top``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = 3 if top else 2
    figure = Figure(figsize=(WIDTH, HEIGHT if top else HEIGHT * 2 / 3), dpi=DPI)
    # Fixed margins (a layout engine doubles the time): room on the left for a name of NAME_CHARS.
    figure.subplots_adjust(left=0.25 if top else 0.08, right=0.97, top=0.9, bottom=0.07, hspace=0.45)
    FigureCanvasAgg(figure)
    axes = figure.subplots(panels, 1)
    figure.suptitle(_short(title, 80), fontsize=13, parse_math=False)

    days = axes[0]
    days.bar(range(len(activity.days)), [n for _, n in activity.days], color="#5865F2")
    ticks = list(range(0, len(activity.days), 5))
    days.set_xticks(ticks, [activity.days[i][0].strftime("%b %d") for i in ticks], fontsize=8)
    days.set_title("Images per day (UTC), last 30 days", fontsize=10)
    hours = axes[1]
    hours.bar(range(24), activity.hours, color="#57F287")
    hours.set_xticks(range(0, 24, 3), [f"{h:02d}:00" for h in range(0, 24, 3)], fontsize=8)
    hours.set_title("Images by hour of the day (UTC), last 30 days", fontsize=10)
    if top:
        users = axes[2]
        ranked = list(reversed(top))  # the top user on top
        users.barh(range(len(ranked)), [b.value for b in ranked], color="#FEE75C")
        labels = [_short(b.label, NAME_CHARS) for b in ranked]
        users.set_yticks(range(len(ranked)), labels, fontsize=9, parse_math=False)
        users.xaxis.set_major_locator(MaxNLocator(integer=True))
        users.set_title("Top users (images, all time)", fontsize=10)
    for ax in axes:
        ax.spines[["top", "right"]].set_visible(False)
    for ax in (days, hours):
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.grid(True, alpha=0.3)
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
