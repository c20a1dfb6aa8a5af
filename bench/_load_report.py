"""bench.load's report: the numbers of one run (analyse) and their text form (print_report)."""

from __future__ import annotations

import re
from typing import Any

from bench._bot_records import jobs_from_db, ts
from bench._load_config import TARGET_OVERHEAD_P50_MS, TARGET_RATIO, TARGET_RSS_GROWTH_MB, Config, StackRun
from bench._stats import covered_seconds, fmt, machine_info, rss_trend, summary


def analyse(cfg: Config, run: StackRun, alone: dict[str, Any] | None) -> dict[str, Any]:
    rows = jobs_from_db(run.workdir / "bot.db")
    typed_ids = {t.interaction_id for t in run.typed}
    by_interaction = {r["interaction_id"]: r for r in rows if r["interaction_id"] is not None}
    done_at: dict[str, float] = {}
    for rec in run.probe:
        if rec.get("e") == "JobDone":
            done_at.setdefault(rec["job"], rec["t"])  # the first result that reached the JobManager

    first_reply, queue_wait, engine, e2e, overhead, intake, return_path = [], [], [], [], [], [], []
    intervals: list[tuple[float, float]] = []
    lost, failed, duplicated, images = 0, 0, 0, 0
    per_job: list[dict[str, Any]] = []
    for t in run.typed:
        reply = run.first_reply.get(t.interaction_id)
        if reply is not None:
            first_reply.append(reply - t.t_typed)
        row = by_interaction.get(t.interaction_id)
        posts = run.result_posts.get(row["id"], {}) if row else {}
        if len(posts) > 1:
            duplicated += 1
        if row is not None and row["state"] == "failed":
            failed += 1
            continue
        if row is None or row["state"] != "done" or not posts:
            lost += 1  # typed, but no result picture ever reached the channel
            continue
        images += row["count"]
        posted = min(posts.values())
        created = ts(row["created_at"])
        eng = float(row["engine_seconds"] or 0.0)
        # Fall back on the row's finished_at when the probe missed the event (it should not).
        back = done_at.get(row["id"]) or ts(row["finished_at"]) or posted
        engine_start = back - eng
        intervals.append((engine_start, back))
        total = posted - t.t_typed
        wait = engine_start - (created or t.t_typed)
        e2e.append(total)
        engine.append(eng)
        queue_wait.append(wait)
        overhead.append(total - eng - wait)
        intake.append((created or t.t_typed) - t.t_typed)
        return_path.append(posted - back)
        if cfg.detail:
            per_job.append(
                {
                    "job": row["id"],
                    "user": t.user,
                    "typed": round(t.t_typed - run.t_start, 4),
                    "first_reply_ms": None if reply is None else round((reply - t.t_typed) * 1000, 1),
                    "queue_wait_ms": round(wait * 1000, 1),
                    "engine_ms": round(eng * 1000, 1),
                    "end_to_end_ms": round(total * 1000, 1),
                }
            )
    wall = max(1e-9, run.t_end - run.t_start)
    jobs_n = max(1, len(run.typed))
    stack_ips = images / wall
    alone_ips = alone.get("images_per_s") if alone else None
    ratio = stack_ips / alone_ips if alone_ips else None
    busy = covered_seconds(intervals, run.t_start, run.t_end) / wall
    bot_peak, engine_peak = run.rss.peak()
    trend = rss_trend(run.rss, run.t_start, run.t_end)
    lag = [r for r in run.probe if r.get("e") == "lag" and run.t_start <= r["t"] <= run.t_end + 1]
    overhead_ms = summary(overhead, 1000)
    report: dict[str, Any] = {
        "benchmark": "load",
        "machine": machine_info(),
        "config": {
            "users": cfg.users,
            "jobs_per_user": cfg.jobs,
            "images_per_job": cfg.count,
            "size": f"{cfg.size}x{cfg.size}",
            "steps": cfg.steps,
            "max_batch": cfg.max_batch,
            "preview_every": cfg.preview_every,
            "device": cfg.device,
            "pinned": cfg.pin,
            "model": "tiny (python -m engine make-tiny-model)" if cfg.model is None else cfg.model,
        },
        "jobs": {
            "typed": len(run.typed),
            "in_database": sum(1 for r in rows if r["interaction_id"] in typed_ids),
            "done": len(e2e),
            "failed": failed,
            "lost": lost,
            "duplicated": duplicated,
            "late_first_replies": sum(1 for t in run.typed if t.late),
            "retried": sum(1 for r in rows if (r["attempts"] or 0) > 1),
        },
        "latency_ms": {
            "first_reply": summary(first_reply, 1000),
            "queue_wait": summary(queue_wait, 1000),
            "engine": summary(engine, 1000),
            "end_to_end": summary(e2e, 1000),
            "bot_overhead": overhead_ms,
            "intake": summary(intake, 1000),
            "return_path": summary(return_path, 1000),
        },
        "throughput": {
            "wall_s": round(wall, 3),
            "images": images,
            "stack_images_per_s": round(stack_ips, 3),
            "engine_alone_images_per_s": alone_ips,
            "engine_alone_wall_s": alone.get("wall_s") if alone else None,
            "ratio": None if ratio is None else round(ratio, 3),
        },
        "engine_busy_fraction": round(busy, 3),
        # CPU the bot process spends per job (interaction, admission, database, dispatch, status edits,
        # saving PNGs, the grid, the upload): its cost, whatever the contention on the machine.
        "cpu_ms": {
            "bot_per_job": None if run.cpu_seconds is None else round(run.cpu_seconds[0] * 1000 / jobs_n, 2),
            "bot_event_loop_per_job": None
            if run.cpu_seconds is None
            else round(run.cpu_seconds[1] * 1000 / jobs_n, 2),
            "engine_per_image": None
            if run.cpu_seconds is None or not images
            else round(run.cpu_seconds[2] * 1000 / images, 2),
        },
        "memory_mb": {
            "bot_peak_rss": None if bot_peak is None else round(bot_peak, 1),
            "engine_peak_rss": None if engine_peak is None else round(engine_peak, 1),
            "engine_alone_peak_rss": alone.get("peak_rss_mb") if alone else None,
            "bot_rss_trend": trend,
        },
        "bot_loop_lag_ms": {
            "max": max((r["max_ms"] for r in lag), default=None),
            "p50_of_per_second_max": summary([r["max_ms"] for r in lag])["p50"],
        },
        "per_job_work": _work_per_job(run, jobs_n),
        "engine_batches": _batches(run, {r["id"]: r["count"] for r in rows}),
        "engine_alone": alone,
        "bot_exit_code": run.bot_exit,
    }
    growth = trend["growth_mb"]
    report["targets"] = {
        "ratio_ge_0.95": None if ratio is None else ratio >= TARGET_RATIO,
        "bot_overhead_p50_le_30ms": None
        if overhead_ms["p50"] is None
        else overhead_ms["p50"] <= TARGET_OVERHEAD_P50_MS,
        "zero_lost": lost == 0,
        "zero_duplicated": duplicated == 0,
        "bot_rss_flat": None if growth is None else growth <= TARGET_RSS_GROWTH_MB,
    }
    if cfg.detail:
        report["per_job"] = per_job
    return report


_REST_KINDS = (
    ("interaction_callback", re.compile(r"^POST /api/v\d+/interactions/")),
    ("webhook_edit", re.compile(r"^PATCH /api/v\d+/webhooks/")),
    ("webhook_other", re.compile(r"^\w+ /api/v\d+/webhooks/")),
    ("reaction", re.compile(r"/reactions/")),
    ("channel_message", re.compile(r"^\w+ /api/v\d+/channels/\d+/messages")),
)


BATCH_GAP = 0.005  # JobStarted events of one batch are written back to back; batches are far more apart


def _batches(run: StackRun, counts: dict[str, int]) -> dict[str, Any]:
    """How many images the engine put in each UNet batch during the load, from the JobStarted events: the
    worker emits them for a whole batch in one loop, so a batch arrives as a burst of events."""
    starts = sorted(
        (r["t"], r["job"])
        for r in run.probe
        if r.get("e") == "JobStarted" and run.t_start <= r["t"] <= run.t_end
    )
    sizes: list[int] = []
    last = None
    for t, job in starts:
        if last is None or t - last > BATCH_GAP:
            sizes.append(0)
        sizes[-1] += counts.get(job, 1)
        last = t
    hist: dict[str, int] = {}
    for n in sizes:
        hist[str(n)] = hist.get(str(n), 0) + 1
    return {
        "batches": len(sizes),
        "mean_images": round(sum(sizes) / len(sizes), 2) if sizes else None,
        "images_histogram": dict(sorted(hist.items(), key=lambda kv: int(kv[0]))),
    }


def _work_per_job(run: StackRun, jobs: int) -> dict[str, Any]:
    """What the bot did per job during the load: database statements and commits, Discord REST calls."""
    counted = [r for r in run.probe if "sql" in r]
    before = [r for r in counted if r["t"] <= run.t_start]
    after = [r for r in counted if r["t"] >= run.t_end]
    out: dict[str, Any] = {"sql_statements": None, "commits": None}
    if before and after:
        # From the last probe line before the load (a warm-up job's result) to the first after it.
        out["sql_statements"] = round((after[0]["sql"] - before[-1]["sql"]) / jobs, 1)
        out["commits"] = round((after[0]["commits"] - before[-1]["commits"]) / jobs, 1)
    kinds: dict[str, int] = {}
    for method, path, _status in run.rest_calls:
        line = f"{method} {path}"
        kind = next((k for k, rx in _REST_KINDS if rx.search(line)), "other")
        kinds[kind] = kinds.get(kind, 0) + 1
    out["discord_rest_calls"] = round(len(run.rest_calls) / jobs, 2)
    out["discord_rest_by_kind"] = {k: round(v / jobs, 2) for k, v in sorted(kinds.items())}
    return out


def print_report(r: dict[str, Any]) -> None:
    m, c, j, lat, tp = r["machine"], r["config"], r["jobs"], r["latency_ms"], r["throughput"]
    mem = r["memory_mb"]
    print(
        f"bench.load  {m['date']}  {m['cpu']} ({m['cpu_cores']} cores)  load {m['loadavg_1m']}\n"
        f"  {c['users']} users x {c['jobs_per_user']} jobs x {c['images_per_job']} images, {c['size']}, "
        f"{c['steps']} steps, max batch {c['max_batch']}, {c['device']}"
    )
    print(
        f"  jobs: typed {j['typed']}, done {j['done']}, failed {j['failed']}, lost {j['lost']}, "
        f"duplicated {j['duplicated']}, late first replies {j['late_first_replies']}"
    )
    print(f"  {'ms':<14}{'p50':>9}{'p95':>9}{'max':>9}")
    for name, s in lat.items():
        print(f"  {name:<14}{fmt(s['p50'], 1):>9}{fmt(s['p95'], 1):>9}{fmt(s['max'], 1):>9}")
    print(
        f"  throughput: stack {fmt(tp['stack_images_per_s'])} img/s over {tp['wall_s']} s, engine alone "
        f"{fmt(tp['engine_alone_images_per_s'])} img/s, ratio {fmt(tp['ratio'], 3)}"
    )
    print(
        f"  engine busy {r['engine_busy_fraction']:.1%}; bot loop lag max {r['bot_loop_lag_ms']['max']} ms; "
        f"bot CPU {r['cpu_ms']['bot_per_job']} ms/job "
        f"({r['cpu_ms']['bot_event_loop_per_job']} in its event loop), "
        f"engine CPU {r['cpu_ms']['engine_per_image']} ms/image"
    )
    b = r["engine_batches"]
    print(f"  engine batches: {b['batches']}, mean {b['mean_images']} images, sizes {b['images_histogram']}")
    work = r["per_job_work"]
    print(
        f"  per job the bot ran {work['sql_statements']} SQL statements ({work['commits']} commits) and "
        f"{work['discord_rest_calls']} Discord REST calls {work['discord_rest_by_kind']}"
    )
    trend = mem["bot_rss_trend"]
    print(
        f"  peak RSS: bot {mem['bot_peak_rss']} MB, engine {mem['engine_peak_rss']} MB (alone "
        f"{mem['engine_alone_peak_rss']} MB); bot RSS {trend['second_quarter_mb']} -> "
        f"{trend['last_quarter_mb']} MB"
    )
    print(
        "  targets: "
        + ", ".join(f"{k} {'ok' if v else ('-' if v is None else 'MISSED')}" for k, v in r["targets"].items())
    )
