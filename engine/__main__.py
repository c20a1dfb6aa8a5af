"""``python -m engine``: the engine's command line.

    python -m engine make-tiny-model [--arch sd15|sdxl] DIR
                                                    tiny random-weight SD / SDXL pipeline for tests (offline)
    python -m engine make-model --arch sd15|sdxl --random DIR
                                                    full-size SD 1.5 / SDXL architecture, random weights
    python -m engine worker --model M [...]         the worker process (protocol frames on stdin/stdout)
    python -m engine serve --nats URL --model M [--device cuda:N]
                                                    scale-out worker pulling jobs from NATS JetStream
                                                    (credentials: NATS_USER/NATS_PASSWORD, NATS_TOKEN,
                                                    NATS_CREDS or --nats-creds FILE; never in the URL)
    python -m engine generate "prompt" --out img.png [...]
                                                    one-off render from a shell, with a progress bar
    python -m engine convert FILE.ckpt FILE.safetensors [--force] [--allow-pickle]
                                                    a pickled checkpoint, LoRA or embedding as .safetensors
                                                    (read with the safe unpickler: engine/safe_pickle.py)

Flags fall back to the environment where one is named: ENGINE_MAX_BATCH, MODELS_DIR, EMBEDDINGS_DIR,
ALLOW_PICKLE_CHECKPOINTS, ENGINE_DEVICE, ENGINE_DTYPE, ENGINE_SINGLE_FILE_CONFIG, ENGINE_TAESD,
ENGINE_SAFETY_CHECKER, ENGINE_MODEL, ENGINE_WORKER_ID, NATS_URL, NATS_NAMESPACE.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = text.lower().split("x")
        return int(w), int(h)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size must look like 512x768, got {text!r}") from exc


def _add_model_flags(p: argparse.ArgumentParser, *, model_required: bool) -> None:
    p.add_argument(
        "--model",
        required=model_required,
        default=os.environ.get("ENGINE_MODEL"),
        help="hub id, diffusers folder, checkpoint file, or a name in --models-dir",
    )
    p.add_argument(
        "--device",
        default=os.environ.get("ENGINE_DEVICE", "auto"),
        help="auto | cpu | cuda | cuda:N | mps (default auto)",
    )
    p.add_argument(
        "--dtype",
        default=os.environ.get("ENGINE_DTYPE", "auto"),
        choices=("auto", "fp16", "bf16", "fp32"),
        help="auto: fp16 on GPUs, fp32 on CPU",
    )
    p.add_argument(
        "--models-dir",
        default=os.environ.get("MODELS_DIR") or None,
        help="folder of checkpoints/diffusers folders that requests select by name",
    )
    p.add_argument(
        "--lora-dir",
        default=os.environ.get("LORA_DIR") or None,
        help="folder of LoRA files that prompts use as <lora:name:weight> "
        "(default: a Lora folder beside --models-dir, as in A1111's models/)",
    )
    p.add_argument(
        "--embeddings-dir",
        default=os.environ.get("EMBEDDINGS_DIR") or None,
        help="folder of textual-inversion embeddings that prompts use by file name "
        "(default: the embeddings folder beside --models-dir's models/, as in A1111)",
    )
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        default=_env_flag("ALLOW_PICKLE_CHECKPOINTS"),
        help="read pickles (.ckpt/.pt/.bin) that the safe unpickler refuses with the full one (runs code)",
    )
    p.add_argument(
        "--single-file-config",
        default=os.environ.get("ENGINE_SINGLE_FILE_CONFIG") or None,
        help="local diffusers folder whose configs describe single-file checkpoints",
    )
    p.add_argument(
        "--taesd",
        default=os.environ.get("ENGINE_TAESD") or None,
        help="local TAESD (AutoencoderTiny) folder for better previews",
    )
    p.add_argument(
        "--taesdxl",
        default=os.environ.get("ENGINE_TAESDXL") or None,
        help="local TAESDXL folder for better previews of SDXL models",
    )
    p.add_argument(
        "--safety-checker",
        default=os.environ.get("ENGINE_SAFETY_CHECKER") or None,
        help="local safety checker folder, run for requests with safety_check set",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet (warmed up at start)")
    p.add_argument("--cpu-offload", action="store_true", help="model CPU offload for 4 GB-class GPUs")
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="UNet in channels_last memory format (measured slower for SD 1.5 on an H200: BENCHMARKS.md)",
    )
    p.add_argument(
        "--model-cache",
        type=int,
        default=int(os.environ.get("MODEL_CACHE") or 2),
        help="models kept loaded on the device, least recently used evicted first (default 2)",
    )
    p.add_argument(
        "--model-cache-ram",
        type=int,
        default=int(os.environ.get("MODEL_CACHE_RAM") or 0),
        help="models evicted from the device kept in CPU RAM instead of dropped (default 0)",
    )
    p.add_argument(
        "--model-cache-gb",
        type=float,
        default=float(os.environ.get("MODEL_CACHE_GB") or 0),
        help="most GB of weights kept on the device together (default 0: only --model-cache counts)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=int(os.environ.get("ENGINE_MAX_BATCH", "4")),
        help="most images in one UNet batch (default 4)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="imaginebot GPU engine")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-tiny-model", help="write a tiny random-weight SD pipeline folder")
    p.add_argument("dir", type=Path)
    p.add_argument("--arch", choices=("sd15", "sdxl"), default="sd15", help="SD 1.x (default) or SDXL")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("make-model", help="write a full-size architecture with random weights")
    p.add_argument("dir", type=Path)
    p.add_argument("--arch", choices=("sd15", "sdxl", "tiny"), default="sd15")
    p.add_argument("--random", action="store_true", required=True, help="random weights (the only mode)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16", help="weights on disk (default fp16)")

    p = sub.add_parser("worker", help="serve protocol frames on stdin/stdout")
    _add_model_flags(p, model_required=True)
    p.add_argument("--worker-id", default=os.environ.get("ENGINE_WORKER_ID") or None)

    p = sub.add_parser("serve", help="scale-out worker: pull jobs from NATS JetStream (--nats URL)")
    _add_model_flags(p, model_required=False)
    from engine.nats_serve import add_serve_flags

    add_serve_flags(p)

    p = sub.add_parser("generate", help="render one prompt to PNG files")
    p.add_argument("prompt")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("out.png"),
        help="output PNG; with --count N > 1 files are named OUT-0.png, OUT-1.png, ...",
    )
    p.add_argument("--negative", default="")
    p.add_argument("--seed", type=int, default=None, help="default: random")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=7.0)
    p.add_argument("--sampler", default=None, help="A1111 sampler name (default DPM++ 2M)")
    p.add_argument("--scheduler", default="Automatic", help="A1111 schedule type (default Automatic)")
    p.add_argument("--clip-skip", type=int, default=0, help="A1111 clip skip (default 0: the model's)")
    p.add_argument("--size", type=_size, default=(512, 512), help="WxH (default 512x512)")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--init", type=Path, default=None, help="init image: img2img")
    p.add_argument("--strength", type=float, default=0.75)
    p.add_argument("--upscale", action="store_true", help="2x upscale of --init (hires-fix style)")
    _add_model_flags(p, model_required=False)

    p = sub.add_parser("convert", help="write a pickled .ckpt/.pt/.bin as .safetensors (safe unpickler)")
    p.add_argument("source", type=Path)
    p.add_argument("dest", type=Path)
    p.add_argument("--force", action="store_true", help="replace DEST if it exists")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        default=_env_flag("ALLOW_PICKLE_CHECKPOINTS"),
        help="read a file the safe unpickler refuses with the full one (runs its code: trusted files only)",
    )
    return parser


def _convert(args: argparse.Namespace) -> int:
    from engine.convert import ConvertError, convert
    from engine.safe_pickle import PickleLoadError, PickleRefused

    try:
        count = convert(args.source, args.dest, force=args.force, allow_pickle=args.allow_pickle)
    except (ConvertError, PickleRefused, PickleLoadError, OSError) as exc:
        print(f"engine convert: {exc}", file=sys.stderr)
        return 1
    print(f"{args.dest} ({count} tensors)")
    return 0


def _generate(args: argparse.Namespace) -> int:
    import logging
    import random

    from tqdm import tqdm

    from engine.protocol import DEFAULT_SAMPLER, GenerateRequest, JobDone, JobKind, JobProgress
    from engine.worker import runner_from_args

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if not args.model:
        print("engine generate: --model is required (or ENGINE_MODEL)", file=sys.stderr)
        return 2
    kind = JobKind.TXT2IMG
    init = None
    if args.init is not None:
        init = args.init.read_bytes()
        kind = JobKind.UPSCALE if args.upscale else JobKind.IMG2IMG
    request = GenerateRequest(
        job_id="cli",
        prompt=args.prompt,
        negative_prompt=args.negative,
        seed=args.seed if args.seed is not None else random.randrange(2**32),
        steps=args.steps,
        cfg_scale=args.cfg,
        width=args.size[0],
        height=args.size[1],
        count=args.count,
        sampler=args.sampler or DEFAULT_SAMPLER,
        scheduler=args.scheduler,
        clip_skip=args.clip_skip,
        kind=kind,
        strength=args.strength,
        init_image=init,
    )
    from engine.loading import ModelLoadError

    try:
        runner = runner_from_args(args, worker_id="")
    except (ModelLoadError, ValueError, FileNotFoundError) as exc:  # one line, as the worker says it
        print(f"engine generate: {exc}", file=sys.stderr)
        return 2
    bar = tqdm(total=None, unit="step", file=sys.stderr, desc="generating")

    def on_event(event: object) -> None:
        if isinstance(event, JobProgress):
            bar.total = event.total
            bar.n = event.step
            bar.refresh()

    try:
        results = runner.run([request], on_event=on_event)
    finally:
        bar.close()
        runner.close()
    result = results.get("cli")
    if not isinstance(result, JobDone):
        print(f"engine generate: {getattr(result, 'reason', 'cancelled')}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for image in result.images:
        path = (
            args.out
            if len(result.images) == 1
            else args.out.with_name(f"{args.out.stem}-{image.index}{args.out.suffix or '.png'}")
        )
        path.write_bytes(image.png)
        print(f"{path} (seed {image.seed})")
    print(f"{len(result.images)} image(s) in {result.engine_seconds:.1f}s", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "make-tiny-model" and args.arch == "sdxl":
        from engine.tiny_sdxl import make_tiny_sdxl

        print(make_tiny_sdxl(args.dir, seed=args.seed))
        return 0
    if args.command == "make-tiny-model":
        from engine.tiny import make_tiny_model

        print(make_tiny_model(args.dir, seed=args.seed))
        return 0
    if args.command == "make-model":
        if args.arch == "tiny":
            from engine.tiny import make_tiny_model

            print(make_tiny_model(args.dir, seed=args.seed))
            return 0
        if args.arch == "sdxl":
            from engine.sdxl import make_sdxl_random

            print(make_sdxl_random(args.dir, seed=args.seed, dtype=args.dtype))
            return 0
        from engine.sd15 import make_sd15_random

        print(make_sd15_random(args.dir, seed=args.seed, dtype=args.dtype))
        return 0
    if args.command == "worker":
        from engine.worker import run_worker

        return run_worker(args)
    if args.command == "serve":
        from engine.nats_serve import run_serve

        return run_serve(args)
    if args.command == "generate":
        return _generate(args)
    if args.command == "convert":
        return _convert(args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
