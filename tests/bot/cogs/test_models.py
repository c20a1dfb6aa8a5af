"""/models, the model option's autocomplete and the per-guild default model, through the loopback Discord
and the real bot (engine: a scripted transport that records what it was sent)."""

from __future__ import annotations

import sqlite3

import pytest

from fakediscord.state import MANAGE_GUILD
from tests.bot.answers import answer, refusal, settled
from tests.bot.jobs.scripted import ScriptedTransport, scripted_bot, scripted_settings
from tests.bot.model_headers import write_header_only


@pytest.fixture
def models(tmp_path):
    folder = tmp_path / "Stable-diffusion"
    folder.mkdir()
    write_header_only(folder / "juggernautXL.safetensors", "sdxl")
    (folder / "juggernautXL.json").write_text(
        '{"steps": 30, "cfg": 5, "description": "A1111 keeps its notes here"}'
    )
    write_header_only(folder / "dreamshaper_8.safetensors", "sd1")
    write_header_only(folder / "v2-1_768.safetensors", "sd2")
    (folder / "broken.safetensors").write_bytes(b"not a checkpoint")
    return folder


async def _run(fake, name, options, *, guild, channel, user, **kw):
    inter = await fake.invoke(name, options, guild=guild, channel=channel, user=user, **kw)
    return await settled(fake, inter)


async def test_models_lists_family_and_size_and_autocomplete_shows_the_family(fake_discord, tmp_path, models):
    fake = fake_discord
    guild = fake.add_guild("Art Club")
    channel = fake.add_channel(guild, "art")
    alice = fake.add_user("alice")
    fake.add_member(guild, alice)
    settings = scripted_settings(fake, tmp_path, GUILD_IDS=guild.id, MODELS_DIR=models)
    async with scripted_bot(fake, settings, ScriptedTransport()):
        listed = await _run(fake, "models", {}, guild=guild, channel=channel, user=alice)
        lines = answer(listed).splitlines()
        assert listed.ephemeral
        assert "• `dreamshaper_8`: SD 1.x, 512×512" in lines
        assert "• `juggernautXL`: SDXL, 1024×1024" in lines
        assert "• `v2-1_768`: SD 2.x, 768×768" in lines
        assert any(line.startswith("• `broken`: not usable") for line in lines)

        auto = await fake.autocomplete(
            "imagine", "model", "", {"prompt": "x"}, guild=guild, channel=channel, user=alice
        )
        await auto.wait_response()
        assert [(c["name"], c["value"]) for c in auto.autocomplete_choices] == [
            ("dreamshaper_8 (SD 1.x)", "dreamshaper_8"),
            ("juggernautXL (SDXL)", "juggernautXL"),
            ("v2-1_768 (SD 2.x)", "v2-1_768"),
        ]  # the broken file is not offered


async def test_the_guild_default_model_and_its_family_size_are_used_by_imagine(
    fake_discord, tmp_path, models
):
    fake = fake_discord
    guild, other = fake.add_guild("Art Club"), fake.add_guild("Elsewhere")
    channel, other_channel = fake.add_channel(guild, "art"), fake.add_channel(other, "art")
    admin, alice = fake.add_user("admin"), fake.add_user("alice")
    fake.add_member(guild, admin, permissions=MANAGE_GUILD)
    fake.add_member(guild, alice)
    fake.add_member(other, alice)
    transport = ScriptedTransport(slots=10)
    settings = scripted_settings(fake, tmp_path, GUILD_IDS=f"{guild.id},{other.id}", MODELS_DIR=models)
    here = {"guild": guild, "channel": channel}
    async with scripted_bot(fake, settings, transport):
        denied = await _run(
            fake, "default-model", {"model": "juggernautXL"}, subcommand="set", user=alice, **here
        )
        assert "Only this server's admins" in answer(denied)
        unusable = await _run(
            fake, "default-model", {"model": "broken"}, subcommand="set", user=admin, **here
        )
        assert "no usable model called `broken`" in answer(unusable)
        done = await _run(
            fake, "default-model", {"model": "juggernautXL"}, subcommand="set", user=admin, **here
        )
        assert "now uses `juggernautXL`" in answer(done)

        for prompt in ("a lighthouse", "a lighthouse --ar 16:9", "a lighthouse --model dreamshaper_8"):
            inter = await _run(fake, "imagine", {"prompt": prompt}, user=alice, **here)
            assert refusal(inter) is None
        inter = await _run(
            fake, "imagine", {"prompt": "a lighthouse"}, guild=other, channel=other_channel, user=alice
        )
        assert refusal(inter) is None
        await fake.wait_until(lambda: len(transport.submitted) == 4, timeout=10)
        sent = [(r.model, r.width, r.height, r.steps, r.cfg_scale) for r in transport.submitted]
        assert sent == [
            ("juggernautXL", 1024, 1024, 30, 5.0),  # the guild's default: SDXL's size, its sidecar's steps
            ("juggernautXL", 1344, 768, 30, 5.0),  # --ar 16:9: SDXL's bucket
            ("dreamshaper_8", 64, 64, 2, 7.0),  # a named SD 1.x model: DEFAULT_SIZE, DEFAULT_STEPS
            (None, 64, 64, 2, 7.0),  # another guild: the bot's MODEL
        ]

        (models / "juggernautXL.safetensors").rename(tmp_path / "moved-away.safetensors")
        gone = await _run(fake, "imagine", {"prompt": "a boat"}, user=alice, **here)
        assert "default model `juggernautXL` is not available any more" in (refusal(gone) or "")
        cleared = await _run(fake, "default-model", {}, subcommand="clear", user=admin, **here)
        assert "no longer this server's default" in answer(cleared)
        await _run(fake, "imagine", {"prompt": "a boat"}, user=alice, **here)
        await fake.wait_until(lambda: len(transport.submitted) == 5, timeout=10)
        assert transport.submitted[-1].model is None
    audit = sqlite3.connect(tmp_path / "bot.db").execute(
        "select action, old_value, new_value from audit_log where action = 'model.default' order by id"
    )
    assert audit.fetchall() == [
        ("model.default", None, "juggernautXL"),
        ("model.default", "juggernautXL", None),
    ]
