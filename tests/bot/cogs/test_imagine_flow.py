"""/imagine as users meet it, through the loopback Discord and the tiny model: buttons, the 🔄 reaction,
flags, a restart between result and click, an expired token, a small upload limit, a 429."""

from __future__ import annotations

import asyncio
import io
import sqlite3
from pathlib import Path

from PIL import Image

from engine.pnginfo import parse_generation_parameters, read_png_parameters
from tests.bot.answers import answer, refusal, settled
from tests.bot.model_headers import write_header_only
from tests.waiting import wait_until

REROLL = "🔄"


def _world(fake):
    guild = fake.add_guild("Art Club")
    channel = fake.add_channel(guild, "art")
    alice, bob = fake.add_user("alice"), fake.add_user("bob")
    fake.add_member(guild, alice)
    fake.add_member(guild, bob)
    return guild, channel, alice, bob


def _has_picture(m) -> bool:
    """A finished result: a picture and the parameter line (progress previews carry a picture too)."""
    return "seed" in m.content and any(
        a.filename.rsplit(".", 1)[-1] in ("png", "webp", "jpg") for a in m.attachments
    )


async def _imagine(fake, guild, channel, user, prompt, **options):
    inter = await fake.invoke(
        "imagine", {"prompt": prompt, **options}, guild=guild, channel=channel, user=user
    )
    message = await fake.wait_for_message(
        lambda m: m.interaction_id == inter.id and _has_picture(m), timeout=120
    )
    return inter, message


def _picture(message) -> Image.Image:
    image = Image.open(io.BytesIO(message.attachments[0].data))
    image.load()
    return image


def _button(message, label_or_emoji):
    for b in message.buttons():
        if b.get("label") == label_or_emoji or (b.get("emoji") or {}).get("name") == label_or_emoji:
            return b["custom_id"]
    raise AssertionError(f"no {label_or_emoji} button in {[b.get('label') for b in message.buttons()]}")


async def _click(fake, message, label, user):
    return await fake.click(message, _button(message, label), user=user)


async def test_result_buttons_and_reaction(fake_discord, make_settings, run_bot, tmp_path):
    fake = fake_discord
    guild, channel, alice, bob = _world(fake)
    async with run_bot(make_settings(GUILD_IDS=guild.id)):
        _, result = await _imagine(fake, guild, channel, alice, "a red fox --seed 100")
        grid_text = read_png_parameters(result.attachments[0].data)
        labels = {b.get("label") or b["emoji"]["name"] for b in result.buttons()}
        assert {"U1", "U2", "U3", "U4", "V1", "V2", "V3", "V4", REROLL, "ℹ️", "🗑️"} <= labels
        await fake.wait_until(lambda: fake.bot_user.id in result.reactions.get(REROLL, set()))

        info = await _click(fake, result, "ℹ️", bob)
        await settled(fake, info)
        assert info.ephemeral and info.original is not None
        text = info.original.content
        assert "a red fox" in text and "Steps: 2" in text and "Seed: 101" in text

        up = await _click(fake, result, "U2", bob)
        upscaled = await fake.wait_for_message(
            lambda m: m.interaction_id == up.id and _has_picture(m), timeout=120
        )
        assert _picture(upscaled).size == (256, 256) and "upscaled" in upscaled.content
        assert "U1" not in {b.get("label") for b in upscaled.buttons()}

        var = await _click(fake, result, "V1", bob)
        varied = await fake.wait_for_message(
            lambda m: m.interaction_id == var.id and _has_picture(m), timeout=120
        )
        assert _picture(varied).size[0] > 256 and "variation" in varied.content

        reroll = await _click(fake, result, REROLL, alice)
        rerolled = await fake.wait_for_message(
            lambda m: m.interaction_id == reroll.id and _has_picture(m), timeout=120
        )
        assert "seeds 100–103" not in rerolled.content and "a red fox" in rerolled.content

        # Reacting 🔄 reruns for whoever reacted, on their quota, replying to the result.
        await fake.react(result, REROLL, user=bob)
        by_reaction = await fake.wait_for_message(
            lambda m: (
                m.author_id == fake.bot_user.id
                and m.interaction_id is None
                and _has_picture(m)
                and f"<@{bob.id}>" in m.content
                and m.id != result.id
            ),
            timeout=120,
        )
        assert by_reaction.message_reference is not None

        # 🗑: not for someone else's result, yes for the author's.
        denied = await _click(fake, result, "🗑️", bob)
        await settled(fake, denied)
        assert denied.ephemeral and not result.deleted
        allowed = await _click(fake, result, "🗑️", alice)
        await fake.wait_until(lambda: result.deleted)
        assert allowed.ephemeral

    db = sqlite3.connect(tmp_path / "bot.db")
    kinds = db.execute("select kind, user_id, state from jobs order by created_at").fetchall()
    assert [k for k, _, _ in kinds] == ["txt2img", "upscale", "img2img", "txt2img", "txt2img"]
    assert all(s == "done" for _, _, s in kinds)
    assert kinds[1][1] == bob.id and kinds[3][1] == alice.id and kinds[4][1] == bob.id

    # The posted grid carries A1111's parameters: the first picture's text, plus every picture's seed.
    (first_path,) = db.execute(
        "select images.path from images join jobs on jobs.id = images.job_id"
        " where jobs.kind = 'txt2img' and images.seed = 100 and images.`index` = 0"
    ).fetchone()
    first_png = await asyncio.to_thread(Path(first_path).read_bytes)
    first = parse_generation_parameters(read_png_parameters(first_png) or "")
    assert first["Prompt"] == "a red fox" and first["Seed"] == "100" and first["RNG"] == "CPU"
    assert parse_generation_parameters(grid_text or "") == {**first, "Seeds": "100, 101, 102, 103"}

    # Posted exactly once each: one delivered message per job.
    assert db.execute("select count(distinct result_message_id) from jobs").fetchone() == (5,)


async def test_buttons_work_after_a_restart(fake_discord, make_settings, run_bot):
    fake = fake_discord
    guild, channel, alice, bob = _world(fake)
    settings = make_settings(GUILD_IDS=guild.id)
    async with run_bot(settings):
        _, result = await _imagine(fake, guild, channel, alice, "a castle", count=2)
    async with run_bot(settings):
        await fake.wait_until(lambda: fake.connected)
        up = await _click(fake, result, "U2", bob)
        upscaled = await fake.wait_for_message(
            lambda m: m.interaction_id == up.id and _has_picture(m), timeout=120
        )
        assert _picture(upscaled).size == (256, 256)


async def test_flags_shape_the_job(fake_discord, make_settings, run_bot, tmp_path):
    fake = fake_discord
    guild, channel, alice, _ = _world(fake)
    async with run_bot(make_settings(GUILD_IDS=guild.id)):
        _, result = await _imagine(
            fake, guild, channel, alice, "a beach --ar 16:9 --no people --count 1 --seed 5", seed=6
        )
        image = _picture(result)
        assert image.width > image.height
    row = (
        sqlite3.connect(tmp_path / "bot.db")
        .execute("select prompt, negative_prompt, count, seed, width, height from jobs")
        .fetchone()
    )
    assert row == ("a beach", "people", 1, 6, image.width, image.height)  # the option beat --seed 5


async def test_expired_token_falls_back_to_a_channel_reply(fake_discord, make_settings, run_bot):
    fake = fake_discord
    guild, channel, alice, _ = _world(fake)
    async with run_bot(make_settings(GUILD_IDS=guild.id, DEFAULT_STEPS=8)):
        inter = await fake.invoke(
            "imagine", {"prompt": "a lighthouse"}, guild=guild, channel=channel, user=alice
        )
        await inter.wait_response()
        fake.expire_token(inter)
        posted = await fake.wait_for_message(
            lambda m: m.interaction_id is None and _has_picture(m), timeout=120
        )
        assert f"<@{alice.id}>" in posted.content
        assert posted.message_reference is not None


async def test_small_upload_limit_gets_a_smaller_file(fake_discord, make_settings, run_bot):
    fake = fake_discord
    guild, channel, alice, _ = _world(fake)
    fake.attachment_size_limit = 12_000
    async with run_bot(make_settings(GUILD_IDS=guild.id, DEFAULT_SIZE=256)):
        _, result = await _imagine(fake, guild, channel, alice, "a detailed forest")
        attachment = result.attachments[0]
        assert attachment.size <= 12_000 and not attachment.filename.endswith(".png")
        assert _picture(result).width >= 128
        # The parameters go along in the EXIF UserComment, where A1111 reads them in a WebP or JPEG.
        assert (read_png_parameters(attachment.data) or "").startswith("a detailed forest\nSteps: ")


async def test_reaction_429_is_retried(fake_discord, make_settings, run_bot):
    fake = fake_discord
    guild, channel, alice, _ = _world(fake)
    fake.fail_next("PUT", r"/reactions/", status=429, retry_after=0.2)
    async with run_bot(make_settings(GUILD_IDS=guild.id)):
        _, result = await _imagine(fake, guild, channel, alice, "a moon")
        await fake.wait_until(lambda: fake.bot_user.id in result.reactions.get(REROLL, set()), timeout=20)
    assert any(status == 429 for _, path, status in fake.requests if "/reactions/" in path)


async def test_cancel_button_stops_a_queued_job(fake_discord, make_settings, run_bot, tmp_path):
    fake = fake_discord
    guild, channel, alice, _ = _world(fake)
    async with run_bot(make_settings(GUILD_IDS=guild.id, ENGINE_MAX_BATCH=1, DEFAULT_STEPS=15)):
        inters = [
            await fake.invoke(
                "imagine", {"prompt": f"tower {i}", "count": 1}, guild=guild, channel=channel, user=alice
            )
            for i in range(3)
        ]
        last = inters[-1]
        status = await fake.wait_for_message(
            lambda m: m.interaction_id == last.id and any(b.get("label") == "Cancel" for b in m.buttons()),
            timeout=60,
        )
        click = await _click(fake, status, "Cancel", alice)
        await click.wait_response()
        cancelled = await fake.wait_for_message(
            lambda m: m.interaction_id == last.id and "Cancelled" in m.content, timeout=120
        )
        assert not cancelled.attachments
        for inter in inters[:2]:
            await fake.wait_for_message(
                lambda m, i=inter: m.interaction_id == i.id and _has_picture(m), timeout=120
            )
        db = sqlite3.connect(tmp_path / "bot.db")
        expected = [("tower 0", "done"), ("tower 1", "done"), ("tower 2", "cancelled")]
        await wait_until(
            lambda: db.execute("select prompt, state from jobs order by prompt").fetchall() == expected,
            "every job to be recorded as finished",
        )
    # Every job is settled in the database and the bot has stopped: nothing is posted after this.
    assert not any(m.interaction_id == last.id and _has_picture(m) for m in fake.messages)

    # A run killed after editing the notice in but before recording it: the next start finds the notice
    # already on Discord and does not post it again.
    with db:
        db.execute("update jobs set delivered_at = null where prompt = 'tower 2'")

    def notices() -> list:
        return [
            m for m in fake.messages if "tower 2" in m.content and "Cancelled" in m.content and not m.deleted
        ]

    assert len(notices()) == 1
    async with run_bot(make_settings(GUILD_IDS=guild.id)):
        await fake.wait_until(
            lambda: db.execute("select delivered_at from jobs where prompt = 'tower 2'").fetchone()[0],
            timeout=60,
        )
    # Recorded as delivered is the last step of delivering it, and the bot has stopped since: a second
    # notice, had the start posted one, is out by now.
    assert len(notices()) == 1, [m.content for m in notices()]


async def test_image_attachment_runs_img2img_and_bad_files_are_refused(
    fake_discord, make_settings, run_bot, tmp_path
):
    fake = fake_discord
    guild, channel, alice, _ = _world(fake)
    source = io.BytesIO()
    Image.new("RGB", (300, 200), (200, 40, 40)).save(source, format="PNG")
    async with run_bot(make_settings(GUILD_IDS=guild.id, DEFAULT_SIZE=256)):
        inter = await fake.invoke(
            "imagine",
            {"prompt": "make it blue", "strength": 0.5, "count": 1},
            guild=guild,
            channel=channel,
            user=alice,
            attachments={"image": ("red.png", source.getvalue(), "image/png")},
        )
        result = await fake.wait_for_message(
            lambda m: m.interaction_id == inter.id and _has_picture(m), timeout=120
        )
        picture = _picture(result)
        assert picture.width > picture.height  # kept the 3:2 shape of the picture given

        bad = await fake.invoke(
            "imagine",
            {"prompt": "x"},
            guild=guild,
            channel=channel,
            user=alice,
            attachments={"image": ("notes.txt", b"hello", "text/plain")},
        )
        await settled(fake, bad)  # refused after the defer, privately (tests/bot/answers.py)
        assert "not a picture" in (refusal(bad) or "")
    rows = (
        sqlite3.connect(tmp_path / "bot.db")
        .execute("select kind, strength, init_image_path from jobs")
        .fetchall()
    )
    assert len(rows) == 1 and rows[0][:2] == ("img2img", 0.5)
    with Image.open(rows[0][2]) as saved:  # the input is kept, so a restart can still run the job
        assert saved.size == (300, 200)


async def test_model_autocomplete_and_unknown_model(fake_discord, make_settings, run_bot, tmp_path):
    fake = fake_discord
    guild, channel, alice, _ = _world(fake)
    models = tmp_path / "models"
    models.mkdir()
    write_header_only(models / "dreamshaper_8.safetensors", "sd1")
    write_header_only(models / "v1-5-pruned-emaonly.safetensors", "sd1")
    (models / "old.ckpt").write_bytes(b"")  # a pickle: offered too (it loads through the safe unpickler)
    async with run_bot(make_settings(GUILD_IDS=guild.id, MODELS_DIR=models)):
        auto = await fake.autocomplete(
            "imagine", "model", "dream", {"prompt": "x"}, guild=guild, channel=channel, user=alice
        )
        await auto.wait_response()
        assert [c["value"] for c in auto.autocomplete_choices] == ["dreamshaper_8"]
        everything = await fake.autocomplete(
            "imagine", "model", "", {"prompt": "x"}, guild=guild, channel=channel, user=alice
        )
        await everything.wait_response()
        assert [c["value"] for c in everything.autocomplete_choices] == [
            "dreamshaper_8",
            "old",
            "v1-5-pruned-emaonly",
        ]

        unknown = await fake.invoke(
            "imagine", {"prompt": "x", "model": "older"}, guild=guild, channel=channel, user=alice
        )
        await settled(fake, unknown)
        text = refusal(unknown) or ""
        assert "no model called" in text and "dreamshaper_8" in text
    assert sqlite3.connect(tmp_path / "bot.db").execute("select count(*) from jobs").fetchone() == (0,)


async def test_lora_tags_from_the_a1111_folder_and_unknown_ones(
    fake_discord, make_settings, run_bot, tmp_path
):
    from engine.tiny import make_tiny_lora

    fake = fake_discord
    guild, channel, alice, _ = _world(fake)
    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    (models / "Lora").mkdir()
    make_tiny_lora(models / "Lora" / "ink_style.safetensors")
    # No LORA_DIR: the Lora folder beside MODELS_DIR is used, as in A1111's models/ layout.
    async with run_bot(make_settings(GUILD_IDS=guild.id, MODELS_DIR=models / "Stable-diffusion")):
        unknown = await fake.invoke(
            "imagine", {"prompt": "a cat <lora:watercolor:0.8>"}, guild=guild, channel=channel, user=alice
        )
        await settled(fake, unknown)
        text = refusal(unknown) or ""
        # (Markdown-escaped: Discord shows `ink\_style` as ink_style.)
        assert "unknown LoRA 'watercolor'" in text and "ink\\_style" in text
        listed = await fake.invoke("loras", {}, guild=guild, channel=channel, user=alice)
        await settled(fake, listed)  # deferred before walking the LoRA folder
        text = answer(listed)
        assert listed.ephemeral and "• `ink_style`" in text and "<lora:ink_style:0.8>" in text
        _, message = await _imagine(fake, guild, channel, alice, "a cat <lora:ink_style:0.8>", count=1)
        params = read_png_parameters(message.attachments[0].data)
        assert params is not None and params.startswith("a cat <lora:ink_style:0.8>")
    rows = sqlite3.connect(tmp_path / "bot.db").execute("select prompt, state from jobs").fetchall()
    assert rows == [("a cat <lora:ink_style:0.8>", "done")]
