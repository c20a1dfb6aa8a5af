"""/embeddings and embeddings in a real run: the A1111 layout's embeddings/ folder (beside models/) is found
without EMBEDDINGS_DIR, /embeddings lists it, and a name in the negative reaches the engine, whose picture
names the file in A1111's "TI hashes"."""

from __future__ import annotations

import hashlib

import torch
from safetensors.torch import save_file

from engine.pnginfo import parse_parameters, read_png_parameters
from tests.bot.answers import answer, settled


def _picture_of(inter_id: int):
    def done(m) -> bool:
        return (
            m.interaction_id == inter_id
            and "seed" in m.content
            and any(a.filename.endswith(".png") for a in m.attachments)
        )

    return done


async def test_embeddings_are_listed_and_apply_from_the_negative(
    fake_discord, make_settings, run_bot, tmp_path
):
    fake = fake_discord
    guild = fake.add_guild("Art Club")
    channel = fake.add_channel(guild, "art")
    alice = fake.add_user("alice")
    fake.add_member(guild, alice)
    webui = tmp_path / "stable-diffusion-webui"
    (webui / "models" / "Stable-diffusion").mkdir(parents=True)
    (webui / "embeddings").mkdir()
    emb = webui / "embeddings" / "bad_hands.safetensors"
    save_file({"emb_params": torch.randn(2, 32, generator=torch.Generator().manual_seed(1))}, str(emb))
    settings = make_settings(GUILD_IDS=guild.id, MODELS_DIR=webui / "models" / "Stable-diffusion")
    async with run_bot(settings):
        listed = await fake.invoke("embeddings", {}, guild=guild, channel=channel, user=alice)
        await settled(fake, listed)  # deferred before walking the folder
        text = answer(listed)
        assert listed.ephemeral and "• `bad_hands`" in text and "--no bad_hands" in text
        inter = await fake.invoke(
            "imagine",
            {"prompt": "a cat", "negative": "bad_hands, blurry", "count": 1},
            guild=guild,
            channel=channel,
            user=alice,
        )
        message = await fake.wait_for_message(_picture_of(inter.id), timeout=120)
    params = parse_parameters(read_png_parameters(message.attachments[0].data) or "")
    assert params["Negative prompt"] == "bad_hands, blurry"
    assert params["TI hashes"] == f"bad_hands: {hashlib.sha256(emb.read_bytes()).hexdigest()[:12]}"
