"""One validated settings object, read from the environment and `.env`.

This is the only module that reads ``os.environ``. Every setting is declared once in ``SPECS`` (name,
parser, default, one-line help); `.env.example` mirrors that table and a test keeps the two in step.
A bad value stops the start with one line that names the setting.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from bot.setting_values import (
    Secret,
    SettingsError,
    bool_,
    choice_,
    database_url_,
    device_,
    host_,
    ids_,
    int_,
    log_level_,
    namespace_,
    port_,
    secret_,
    str_,
    url_,
)
from engine import bounds
from engine.nats_connect import NatsAuth, NatsConfigError, broker, check_url

DISCORD_API_BASE = "https://discord.com/api/v10"
DISCORD_GATEWAY_URL = "wss://gateway.discord.gg"
DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


# ------------------------------------------------------------------------------------------------ table


@dataclass(frozen=True, slots=True)
class Spec:
    name: str
    parse: Callable[[str], Any]
    default: str | None  # None: required
    help: str


SPECS: tuple[Spec, ...] = (
    Spec("DISCORD_TOKEN", secret_, None, "Bot token from https://discord.com/developers/applications → Bot"),
    Spec(
        "DISCORD_API_BASE",
        url_("http", "https"),
        DISCORD_API_BASE,
        "REST base URL (a proxy or a loopback Discord)",
    ),
    Spec("DISCORD_GATEWAY_URL", url_("ws", "wss"), DISCORD_GATEWAY_URL, "Gateway websocket URL"),
    Spec(
        "GUILD_IDS",
        ids_,
        "",
        "Sync slash commands to these guilds at once (comma-separated) instead of globally",
    ),
    Spec(
        "DATABASE_URL",
        database_url_,
        "sqlite+aiosqlite:///data/bot.db",
        "SQLite or PostgreSQL URL (sqlite:///data/bot.db, postgresql://user:password@host/dbname)",
    ),
    Spec("OUTPUT_DIR", str_, "data/images", "Folder where every generated image is saved as PNG"),
    Spec("LOG_LEVEL", log_level_, "INFO", "DEBUG, INFO, WARNING or ERROR"),
    Spec("LOG_FORMAT", choice_("text", "json"), "text", "text, or json: one JSON object a line for shippers"),
    Spec("MODEL", str_, DEFAULT_MODEL, "Hub id, local diffusers folder, or a .safetensors checkpoint file"),
    Spec(
        "MODELS_DIR",
        str_,
        "",
        "Folder of checkpoint files users can pick by name (e.g. A1111 models/Stable-diffusion)",
    ),
    Spec(
        "LORA_DIR",
        str_,
        "",
        "Folder of LoRA files for <lora:name:weight> in prompts (default: a Lora folder beside MODELS_DIR)",
    ),
    Spec(
        "EMBEDDINGS_DIR",
        str_,
        "",
        "Folder of textual-inversion embeddings used by file name in prompts "
        "(default: an embeddings folder beside MODELS_DIR's models/, as in A1111)",
    ),
    Spec(
        "ALLOW_PICKLE_CHECKPOINTS",
        bool_,
        "false",
        "Read pickles (.ckpt/.pt/.bin) that the safe unpickler refuses with the full one (runs their code)",
    ),
    Spec("DEVICE", device_, "auto", "auto, cpu, mps, cuda or cuda:N"),
    Spec(
        "DTYPE",
        choice_("auto", "fp16", "bf16", "fp32"),
        "auto",
        "auto (fp16 on CUDA, fp32 on CPU), fp16, bf16 or fp32",
    ),
    Spec(
        "ENGINE_TRANSPORT",
        choice_("local", "nats"),
        "local",
        "local: engine processes on this machine; nats: remote workers",
    ),
    Spec(
        "ENGINE_WORKERS", int_(1, 16), "1", "Engine worker processes to start (local transport; one per GPU)"
    ),
    Spec("ENGINE_MAX_BATCH", int_(1, 64), "4", "Most images one UNet batch runs together"),
    Spec("ENGINE_ARGS", str_, "", "Extra flags for each engine worker, e.g. --compile or --cpu-offload"),
    Spec(
        "ENGINE_PYTHON",
        str_,
        "",
        "The Python that runs local engine workers, e.g. a venv with CUDA torch (empty: the bot's own)",
    ),
    Spec("MODEL_CACHE", int_(1, 16), "2", "Models each engine worker keeps loaded on its device (LRU)"),
    Spec("MODEL_CACHE_RAM", int_(0, 16), "0", "Models moved off the device kept in CPU RAM, not dropped"),
    Spec("MODEL_CACHE_GB", int_(0, 4096), "0", "Most GB of model weights on a device at once (0: no limit)"),
    Spec("NATS_URL", check_url, "nats://127.0.0.1:4222", "NATS server URL (nats transport; tls:// for TLS)"),
    Spec("NATS_USER", str_, "", "NATS user name (with NATS_PASSWORD), if the server asks for one"),
    Spec("NATS_PASSWORD", secret_, "", "NATS password of NATS_USER"),
    Spec("NATS_TOKEN", secret_, "", "NATS token, if the server asks for a token instead"),
    Spec("NATS_CREDS", str_, "", "NATS .creds file or nkey seed file, for servers set up with nsc or nkeys"),
    Spec("NATS_NAMESPACE", namespace_, "imagine", "Prefix of NATS subjects and streams"),
    Spec("NATS_LEASE_SECONDS", int_(5, 3600), "30", "Seconds until a dead worker's job is requeued"),
    Spec("DEFAULT_STEPS", int_(bounds.STEPS.lo, bounds.STEPS.hi), "20", "Steps when the user gives none"),
    Spec("DEFAULT_CFG", str_, "7", "CFG scale when the user gives none"),
    Spec("DEFAULT_SAMPLER", str_, "DPM++ 2M Karras", "Sampler (A1111 name) when the user gives none"),
    Spec(
        "DEFAULT_SIZE",
        int_(64, 2048),
        "512",
        "Side of a 1:1 image in pixels; other aspects keep its pixel count",
    ),
    Spec("PREVIEW_EVERY", int_(0, 150), "5", "Post a preview every N steps while a job runs (0: none)"),
    Spec("QUEUE_CAP", int_(1, 100000), "500", "Most jobs queued across all guilds"),
    Spec("ADMIN_USER_IDS", ids_, "", "User ids that may use admin commands in every guild"),
    Spec("ADMIN_ROLE_IDS", ids_, "", "Role ids whose members may use admin commands (in those roles' guild)"),
    Spec(
        "SAFETY_CHECKER",
        str_,
        "",
        "Safety checker folder the engine runs for channels not marked NSFW (empty: none)",
    ),
    Spec("DEFAULT_DAILY_IMAGES", int_(0, 1_000_000), "200", "Images per user per day (resets 00:00 UTC)"),
    Spec("DEFAULT_QUEUED_JOBS", int_(0, 1_000), "10", "Jobs one user may have queued or running"),
    Spec("DEFAULT_COOLDOWN_SECONDS", int_(0, 86_400), "0", "Seconds a user waits between two jobs"),
    Spec("DEFAULT_MAX_STEPS", int_(bounds.STEPS.lo, bounds.STEPS.hi), "50", "Most sampling steps per job"),
    Spec(
        "DEFAULT_MAX_PIXELS",
        int_(bounds.PIXELS.lo, bounds.PIXELS.hi),
        "1572864",
        "Most pixels per image, width × height (room for 2× upscales of 512-pixel pictures)",
    ),
    Spec("DEFAULT_MAX_COUNT", int_(bounds.COUNT.lo, bounds.COUNT.hi), "4", "Most images per job"),
    Spec("DEFAULT_ALLOW_IMG2IMG", bool_, "true", "Allow variations, upscales and image prompts"),
    Spec("METRICS_PORT", port_, "", "Port of /metrics (Prometheus) and /healthz; empty: off"),
    Spec("METRICS_HOST", host_, "127.0.0.1", "Address METRICS_PORT listens on (0.0.0.0: every interface)"),
    Spec(
        "HEALTH_MAX_WAIT",
        int_(1, 86_400),
        "600",
        "/healthz fails once the oldest queued job has waited this many seconds",
    ),
)


@dataclass(frozen=True, slots=True)
class Settings:
    discord_token: Secret
    discord_api_base: str
    discord_gateway_url: str
    guild_ids: tuple[int, ...]
    database_url: str = field(repr=False)  # a server URL may carry a password
    output_dir: Path
    log_level: str
    model: str
    models_dir: Path | None
    lora_dir: Path | None
    embeddings_dir: Path | None
    allow_pickle_checkpoints: bool
    device: str
    dtype: str
    engine_transport: str
    engine_workers: int
    engine_max_batch: int
    engine_args: tuple[str, ...]
    engine_python: str
    model_cache: int
    model_cache_ram: int
    model_cache_gb: int
    nats_url: str
    nats_namespace: str
    nats_lease_seconds: int
    nats_auth: NatsAuth  # its repr shows no secret; the URL above never holds one
    default_steps: int
    default_cfg: float
    default_sampler: str
    default_size: int
    preview_every: int
    queue_cap: int
    admin_user_ids: frozenset[int] = field(default_factory=frozenset)
    admin_role_ids: frozenset[int] = field(default_factory=frozenset)
    safety_checker: str = ""
    # Limits where no admin set one (bot/jobs/limits.py): guild, role and user overrides beat these.
    default_daily_images: int = 200
    default_queued_jobs: int = 10
    default_cooldown_seconds: int = 0
    default_max_steps: int = 50
    default_max_pixels: int = 1536 * 1024
    default_max_count: int = 4
    default_allow_img2img: bool = True
    log_format: str = "text"
    metrics_port: int | None = None  # None: no metrics server
    metrics_host: str = "127.0.0.1"
    health_max_wait: int = 600

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env"
    ) -> Settings:
        """Settings from ``environ`` (default: ``os.environ``) over the values in ``env_file``."""
        values: dict[str, str] = {}
        if env_file is not None and Path(env_file).is_file():
            values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
        values.update(os.environ if environ is None else environ)
        parsed: dict[str, Any] = {}
        for spec in SPECS:
            raw = values.get(spec.name)
            if raw is None or (raw.strip() == "" and spec.default is None):
                if spec.default is None:
                    raise SettingsError(f"{spec.name} is not set: {spec.help}")
                raw = spec.default
            try:
                parsed[spec.name] = spec.parse(raw)
            except ValueError as exc:
                raise SettingsError(f"{spec.name}: {exc}") from None
        return cls._build(parsed)

    @classmethod
    def _build(cls, p: dict[str, Any]) -> Settings:
        try:
            cfg = float(p["DEFAULT_CFG"])
        except ValueError:
            raise SettingsError(f"DEFAULT_CFG: expected a number, got {p['DEFAULT_CFG']!r}") from None
        if cfg not in bounds.CFG:
            raise SettingsError(
                f"DEFAULT_CFG: must be between {bounds.CFG.lo:g} and {bounds.CFG.hi:g}, got {cfg}"
            )
        if p["DEFAULT_SIZE"] % 64:
            raise SettingsError(f"DEFAULT_SIZE: must be a multiple of 64, got {p['DEFAULT_SIZE']}")
        from engine.sampler_names import UnknownSamplerError, canonical_sampler

        try:  # any A1111 spelling, alias or pre-1.9 combined name ("DPM++ 2M Karras")
            p["DEFAULT_SAMPLER"] = canonical_sampler(p["DEFAULT_SAMPLER"])
        except UnknownSamplerError as exc:
            raise SettingsError(f"DEFAULT_SAMPLER: {exc}") from None
        models_dir = Path(p["MODELS_DIR"]).expanduser() if p["MODELS_DIR"] else None
        if models_dir is not None and not models_dir.is_dir():
            raise SettingsError(f"MODELS_DIR: {models_dir} is not a folder")
        lora_dir = Path(p["LORA_DIR"]).expanduser() if p["LORA_DIR"] else None
        if lora_dir is not None and not lora_dir.is_dir():
            raise SettingsError(f"LORA_DIR: {lora_dir} is not a folder")
        embeddings_dir = Path(p["EMBEDDINGS_DIR"]).expanduser() if p["EMBEDDINGS_DIR"] else None
        if embeddings_dir is not None and not embeddings_dir.is_dir():
            raise SettingsError(f"EMBEDDINGS_DIR: {embeddings_dir} is not a folder")
        credentials = {
            "NATS_USER": p["NATS_USER"],
            "NATS_PASSWORD": p["NATS_PASSWORD"].get(),
            "NATS_TOKEN": p["NATS_TOKEN"].get(),
            "NATS_CREDS": p["NATS_CREDS"],
        }
        try:
            nats_url, nats_auth = broker(p["NATS_URL"], credentials)
        except NatsConfigError as exc:
            raise SettingsError(str(exc)) from None
        return cls(
            discord_token=p["DISCORD_TOKEN"],
            discord_api_base=p["DISCORD_API_BASE"],
            discord_gateway_url=p["DISCORD_GATEWAY_URL"],
            guild_ids=p["GUILD_IDS"],
            database_url=p["DATABASE_URL"],
            output_dir=Path(p["OUTPUT_DIR"]).expanduser(),
            log_level=p["LOG_LEVEL"],
            model=p["MODEL"],
            models_dir=models_dir,
            lora_dir=lora_dir,
            embeddings_dir=embeddings_dir,
            allow_pickle_checkpoints=p["ALLOW_PICKLE_CHECKPOINTS"],
            device=p["DEVICE"],
            dtype=p["DTYPE"],
            engine_transport=p["ENGINE_TRANSPORT"],
            engine_workers=p["ENGINE_WORKERS"],
            engine_max_batch=p["ENGINE_MAX_BATCH"],
            engine_args=tuple(p["ENGINE_ARGS"].split()),
            engine_python=p["ENGINE_PYTHON"],
            model_cache=p["MODEL_CACHE"],
            model_cache_ram=p["MODEL_CACHE_RAM"],
            model_cache_gb=p["MODEL_CACHE_GB"],
            nats_url=nats_url,
            nats_namespace=p["NATS_NAMESPACE"],
            nats_lease_seconds=p["NATS_LEASE_SECONDS"],
            nats_auth=nats_auth,
            default_steps=p["DEFAULT_STEPS"],
            default_cfg=cfg,
            default_sampler=p["DEFAULT_SAMPLER"],
            default_size=p["DEFAULT_SIZE"],
            preview_every=p["PREVIEW_EVERY"],
            queue_cap=p["QUEUE_CAP"],
            admin_user_ids=frozenset(p["ADMIN_USER_IDS"]),
            admin_role_ids=frozenset(p["ADMIN_ROLE_IDS"]),
            safety_checker=p["SAFETY_CHECKER"],
            default_daily_images=p["DEFAULT_DAILY_IMAGES"],
            default_queued_jobs=p["DEFAULT_QUEUED_JOBS"],
            default_cooldown_seconds=p["DEFAULT_COOLDOWN_SECONDS"],
            default_max_steps=p["DEFAULT_MAX_STEPS"],
            default_max_pixels=p["DEFAULT_MAX_PIXELS"],
            default_max_count=p["DEFAULT_MAX_COUNT"],
            default_allow_img2img=p["DEFAULT_ALLOW_IMG2IMG"],
            log_format=p["LOG_FORMAT"],
            metrics_port=p["METRICS_PORT"],
            metrics_host=p["METRICS_HOST"],
            health_max_wait=p["HEALTH_MAX_WAIT"],
        )
