"""Issue 13's "done when", through the loopback Discord and real engine workers: a MODELS_DIR holding a
tiny SDXL and a tiny SD 1.5; `/imagine model:<sdxl>` posts a grid at the SDXL model's default size, and
U1, V1 and 🔄 work on it; a LoRA made for SD 1.x, named with the SDXL model, is refused privately."""

from __future__ import annotations

import asyncio
import io
import shutil
import sqlite3
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file

from engine.families import model_defaults
from engine.pnginfo import parse_generation_parameters, read_png_parameters
from tests.bot.answers import refusal, settled

REROLL = "🔄"


def _has_picture(m) -> bool:
    return "seed" in m.content and any(a.filename.endswith((".png", ".webp", ".jpg")) for a in m.attachments)


def _button(message, label):
    for b in message.buttons():
        if b.get("label") == label or (b.get("emoji") or {}).get("name") == label:
            return b["custom_id"]
    raise AssertionError(f"no {label} button")


async def _result_of(fake, inter):
    return await fake.wait_for_message(
        lambda m: m.interaction_id == inter.id and _has_picture(m), timeout=180
    )


async def test_sdxl_and_sd15_in_one_models_dir(
    fake_discord, make_settings, run_bot, tmp_path, tiny_model, tiny_sdxl_dir
):
    from engine.tiny_sdxl import write_tiny_sidecar

    models = tmp_path / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    shutil.copytree(tiny_model, models / "tiny-sd15")
    shutil.copytree(tiny_sdxl_dir, models / "tiny-xl")
    write_tiny_sidecar(models / "tiny-xl")  # tiny-xl.json beside it: the tiny SDXL's native size
    xl_side = model_defaults(models / "tiny-xl").native_size
    (models.parent / "Lora").mkdir()
    # kohya's metadata names the base model it was trained on (its header says so; no weights are read).
    save_file(
        {"lora_unet_x.lora_down.weight": torch.zeros(1, 1)},
        str(models.parent / "Lora" / "kohya15.safetensors"),
        {"ss_base_model_version": "sd_v1"},
    )
    assert xl_side != 128  # DEFAULT_SIZE (make_settings): the SD 1.5 size differs

    fake = fake_discord
    guild = fake.add_guild("Art Club")
    channel = fake.add_channel(guild, "art")
    alice = fake.add_user("alice")
    fake.add_member(guild, alice)
    settings = make_settings(
        GUILD_IDS=guild.id, MODELS_DIR=models, MODEL=models / "tiny-sd15", DEFAULT_SAMPLER="Euler a"
    )
    async with run_bot(settings):
        inter = await fake.invoke(
            "imagine",
            {"prompt": "a lighthouse", "model": "tiny-xl", "count": 1, "steps": 2},
            guild=guild,
            channel=channel,
            user=alice,
        )
        grid = await _result_of(fake, inter)
        sd15 = await fake.invoke(
            "imagine", {"prompt": "a lighthouse", "count": 1}, guild=guild, channel=channel, user=alice
        )
        await _result_of(fake, sd15)

        up = await fake.click(grid, _button(grid, "U1"), user=alice)
        upscaled = await _result_of(fake, up)
        var = await fake.click(grid, _button(grid, "V1"), user=alice)
        await _result_of(fake, var)
        again = await fake.click(grid, _button(grid, REROLL), user=alice)
        await _result_of(fake, again)
        # A LoRA made for SD 1.x, named with the SDXL model: refused privately before anything is queued.
        sd15_lora = await fake.invoke(
            "imagine",
            {"prompt": "a cat <lora:kohya15:0.8>", "model": "tiny-xl"},
            guild=guild,
            channel=channel,
            user=alice,
        )
        await settled(fake, sd15_lora)
        assert "made for SD 1.x models and this model is SDXL" in (refusal(sd15_lora) or "")
        picture = Image.open(io.BytesIO(upscaled.attachments[0].data))
        assert picture.size == (2 * xl_side, 2 * xl_side)

    db = sqlite3.connect(tmp_path / "bot.db")
    rows = db.execute("select id, kind, model, width, height, state from jobs order by created_at").fetchall()
    assert [(kind, model, w, h, state) for _, kind, model, w, h, state in rows] == [
        ("txt2img", "tiny-xl", xl_side, xl_side, "done"),  # the SDXL model's default size
        ("txt2img", "tiny-sd15", 128, 128, "done"),  # MODEL, an SD 1.5: DEFAULT_SIZE
        ("upscale", "tiny-xl", 2 * xl_side, 2 * xl_side, "done"),
        ("img2img", "tiny-xl", xl_side, xl_side, "done"),
        ("txt2img", "tiny-xl", xl_side, xl_side, "done"),
    ]
    (first_path,) = db.execute("select path from images where job_id = ? limit 1", (rows[0][0],)).fetchone()
    info = parse_generation_parameters(
        read_png_parameters(await asyncio.to_thread(Path(first_path).read_bytes)) or ""
    )
    assert info["Model"] == "tiny-xl" and (info["Size-1"], info["Size-2"]) == (str(xl_side), str(xl_side))
