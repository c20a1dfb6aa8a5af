"""deploy/grafana-dashboard.json: valid JSON that Grafana imports, and every metric its queries name is one
the bot's or a worker's /metrics serves (a renamed metric would leave a panel silently empty)."""

import json
import re
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bot.db import Database
from bot.db.jobs import JobStore
from bot.jobs.manager import JobManager
from bot.metrics import BotMetrics
from engine.metrics import GPU_MEMORY, WorkerMetrics
from tests.bot.jobs.scripted import ScriptedTransport

ROOT = Path(__file__).resolve().parents[2]
SUFFIXES = ("", "_total", "_bucket", "_sum", "_count")


def served(text: str) -> set[str]:
    """Every sample name a scrape can hold (a family's name with its type's suffixes)."""
    return {f.name + s for f in text_string_to_metric_families(text) for s in SUFFIXES}


async def test_every_metric_the_dashboard_queries_is_served(tmp_path):
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert dashboard["uid"] and len(exprs) >= 10
    assert all(p["datasource"]["uid"] == "${DS_PROMETHEUS}" for p in dashboard["panels"])
    named = {m for e in exprs for m in re.findall(r"\bimagine_[a-z_]+", e)}

    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}")
    try:
        metrics = BotMetrics(lambda: True)
        metrics.follow(JobManager(JobStore(db.sessions), ScriptedTransport(), tmp_path))
        bot = served(metrics.scrape().decode())
    finally:
        await db.close()
    engine = served(generate_latest(WorkerMetrics("cpu").registry).decode()) | {GPU_MEMORY}  # CUDA only
    assert named - bot - engine == set()
    # Every metric either side serves is on the dashboard, but for the Python runtime's own.
    ours = {n for n in bot | engine if n.startswith("imagine_") and not n.endswith("_created")}
    families = {n for n in ours if not n.endswith(SUFFIXES[1:])}
    missing = {f for f in families if not any(f + s in named for s in SUFFIXES)}
    assert missing == set()
