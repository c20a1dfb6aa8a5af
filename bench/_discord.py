"""The loopback Discord for the benchmarks: the one bench module that imports the development package
fakediscord/."""

from __future__ import annotations

import time
from typing import Any

from bench._load_config import JOB_ID
from fakediscord.server import FakeDiscord
from fakediscord.state import FakeChannel, FakeInteraction, FakeMessage, FakeUser, Upload


class TimedFakeDiscord(FakeDiscord):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.first_reply: dict[int, float] = {}  # interaction id -> time
        self.result_posts: dict[str, dict[int, float]] = {}  # job id -> {message id: first seen}

    def create_message(
        self,
        channel: FakeChannel,
        author: FakeUser,
        payload: dict[str, Any],
        uploads: list[Upload],
        *,
        interaction: FakeInteraction | None = None,
        **kwargs: Any,
    ) -> FakeMessage:
        msg = super().create_message(channel, author, payload, uploads, interaction=interaction, **kwargs)
        now = time.time()
        if interaction is not None:
            self.first_reply.setdefault(interaction.id, now)
        self._note_result(msg, now)
        return msg

    def edit_message(
        self, msg: FakeMessage, payload: dict[str, Any], uploads: list[Upload], **kwargs: Any
    ) -> None:
        super().edit_message(msg, payload, uploads, **kwargs)
        self._note_result(msg, time.time())

    def _note_result(self, msg: FakeMessage, now: float) -> None:
        for att in msg.attachments:
            stem = att.filename.rpartition(".")[0]
            if JOB_ID.fullmatch(stem):
                # Keyed by message: the same message edited again is one post, another message is a
                # duplicate delivery.
                self.result_posts.setdefault(stem, {}).setdefault(msg.id, now)
