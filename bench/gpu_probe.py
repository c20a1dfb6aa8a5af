"""Where the GPU time of one Stable Diffusion image goes: the probe behind BENCHMARKS.md's "what stands in
the way" (bench/gpu.sh measures the engine; this measures its parts).

    python -m bench.gpu_probe --model /tmp/imaginebot-bench/sd15-random --json probe.json   # on a GPU
    python -m bench.gpu_probe --tiny --size 64                                             # CPU check

For the UNet alone (one denoising step; a batch of B samples is B/2 images with classifier-free guidance)
it times the forward pass at several batch sizes in each memory layout, with cuDNN's autotuner off and on,
with fused QKV projections, for each SDPA attention backend, and replayed from a CUDA graph (what
``torch.compile(mode="reduce-overhead")`` would give: no per-kernel launch cost). It counts the UNet's
FLOPs (torch.utils.flop_counter) so each time is also an achieved TFLOP/s, profiles one large forward
(the top CUDA kernels), and splits one whole pipeline call into its UNet loop, VAE decode and conversion
to PIL. Each variant is timed as the mean of a few calls after warm-up calls, synchronised on the device.
A variant that fails (an unsupported backend, a capture that breaks) records its error and the probe
goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench._stats import machine_info, write_json


def _sync(torch: Any, device: Any) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timeit(torch: Any, device: Any, fn: Callable[[], Any], iters: int, warm: int = 2) -> float:
    """Mean seconds per call of ``fn`` after ``warm`` untimed calls."""
    for _ in range(warm):
        fn()
    _sync(torch, device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(torch, device)
    return (time.perf_counter() - t0) / iters


@contextlib.contextmanager
def _cudnn_benchmark(torch: Any, on: bool) -> Iterator[None]:
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def _variant(results: dict[str, Any], name: str, run: Callable[[], dict[str, Any]]) -> None:
    """Run one measurement; a failure is recorded, not raised (the rest of the probe still runs)."""
    t0 = time.perf_counter()
    try:
        results[name] = run()
    except Exception as exc:
        results[name] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
        traceback.print_exc()
    results[name]["probe_s"] = round(time.perf_counter() - t0, 2)
    print(f"  {name}: {results[name]}", flush=True)


def probe(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from diffusers import StableDiffusionPipeline

    from engine import devices

    device = devices.resolve_device(args.device)
    dtype = devices.resolve_dtype(args.dtype, device)
    pipe = StableDiffusionPipeline.from_pretrained(
        args.model, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False
    ).to(device)
    pipe.set_progress_bar_config(disable=True)
    unet = pipe.unet
    latent = args.size // pipe.vae_scale_factor
    ctx_dim = unet.config.cross_attention_dim
    gen = torch.Generator("cpu").manual_seed(0)

    def inputs(b: int) -> tuple[Any, Any, Any]:
        x = torch.randn(b, unet.config.in_channels, latent, latent, generator=gen).to(device, dtype)
        enc = torch.randn(b, 77, ctx_dim, generator=gen).to(device, dtype)
        return x, torch.tensor(500, device=device), enc

    report: dict[str, Any] = {
        "benchmark": "gpu_probe",
        "machine": machine_info(),
        "config": {"model": args.model, "size": args.size, "dtype": str(dtype), "device": str(device)},
        "unet": {},
    }
    from torch.utils.flop_counter import FlopCounterMode

    x, t, enc = inputs(1)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        unet(x, t, enc, return_dict=False)
    flops_per_sample = counter.get_total_flops()
    report["unet_gflop_per_sample"] = round(flops_per_sample / 1e9, 2)
    # 20 steps x 2 samples (classifier-free guidance) per image.
    report["unet_tflop_per_image_20_steps"] = round(flops_per_sample * 40 / 1e12, 3)
    res: dict[str, Any] = report["unet"]

    def unet_point(
        b: int, *, layout: str = "contiguous", cudnn: bool = False
    ) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            unet.to(memory_format=fmt)
            x, t, enc = inputs(b)
            if layout == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), _cudnn_benchmark(torch, cudnn):
                s = _timeit(torch, device, lambda: unet(x, t, enc, return_dict=False), args.iters, warm=3)
            return {"ms": round(s * 1000, 2), "tflops": round(flops_per_sample * b / s / 1e12, 1)}

        return run

    for b in args.batches:
        for layout in ("contiguous", "channels_last"):
            for cudnn in (False, True):
                _variant(
                    res,
                    f"b{b}_{layout}_cudnn{'On' if cudnn else 'Off'}",
                    unet_point(b, layout=layout, cudnn=cudnn),
                )
    big = max(args.batches)
    unet.to(memory_format=torch.contiguous_format)

    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        for backend in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):

            def run_backend(backend: str = backend) -> dict[str, Any]:
                with sdpa_kernel(getattr(SDPBackend, backend)):
                    return unet_point(big, cudnn=True)()

            _variant(res, f"b{big}_sdpa_{backend.lower()}", run_backend)

        def cuda_graph(b: int) -> dict[str, Any]:
            # Static inputs captured once and replayed: the launch cost of ~1,000 kernels per step is gone.
            x, t, enc = inputs(b)
            with torch.inference_mode(), _cudnn_benchmark(torch, True):
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(3):
                        unet(x, t, enc, return_dict=False)
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    unet(x, t, enc, return_dict=False)
                s = _timeit(torch, device, graph.replay, args.iters, warm=2)
            return {"ms": round(s * 1000, 2), "tflops": round(flops_per_sample * b / s / 1e12, 1)}

        for b in (min(args.batches), big):
            _variant(res, f"b{b}_cuda_graph", functools.partial(cuda_graph, b))

    def fused_qkv() -> dict[str, Any]:
        unet.fuse_qkv_projections()
        try:
            return unet_point(big, cudnn=True)()
        finally:
            unet.unfuse_qkv_projections()

    _variant(res, f"b{big}_fused_qkv", fused_qkv)

    if device.type == "cuda":

        def profile() -> dict[str, Any]:
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as torch_profile

            x, t, enc = inputs(big)
            with torch.inference_mode(), _cudnn_benchmark(torch, True):
                unet(x, t, enc, return_dict=False)
                _sync(torch, device)
                with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
                    unet(x, t, enc, return_dict=False)
                    _sync(torch, device)
            rows = []
            events = sorted(prof.key_averages(), key=lambda e: e.device_time_total, reverse=True)
            total = sum(e.self_device_time_total for e in events) or 1
            for e in events[:15]:
                rows.append(
                    {
                        "kernel": e.key[:90],
                        "calls": e.count,
                        "self_ms": round(e.self_device_time_total / 1000, 2),
                        "share": round(e.self_device_time_total / total, 3),
                    }
                )
            return {"total_kernel_ms": round(total / 1000, 2), "top": rows}

        _variant(report, "profile", profile)

    def pipeline_split() -> dict[str, Any]:
        # One pipeline call of `images` images: the UNet loop (output_type="latent") and the whole call;
        # the difference is VAE decode + conversion to PIL, which then is timed on its own.
        n = args.pipeline_images
        kw: dict[str, Any] = {
            "prompt": ["a lighthouse at dusk"] * n,
            "num_inference_steps": args.steps,
            "width": args.size,
            "height": args.size,
        }
        with _cudnn_benchmark(torch, True):
            loop = _timeit(torch, device, lambda: pipe(**kw, output_type="latent"), 1, warm=1)
            whole = _timeit(torch, device, lambda: pipe(**kw, output_type="pil"), 1, warm=1)
            lat = torch.randn(n, 4, latent, latent, generator=gen).to(device, dtype)
            with torch.inference_mode():
                decode = _timeit(
                    torch, device, lambda: pipe.vae.decode(lat / pipe.vae.config.scaling_factor), 2, warm=1
                )
                img = pipe.vae.decode(lat / pipe.vae.config.scaling_factor).sample
                to_pil = _timeit(
                    torch, device, lambda: pipe.image_processor.postprocess(img, output_type="pil"), 2, warm=1
                )
        return {
            "images": n,
            "steps": args.steps,
            "unet_loop_s": round(loop, 3),
            "whole_call_s": round(whole, 3),
            "vae_decode_s": round(decode, 3),
            "to_pil_s": round(to_pil, 3),
        }

    _variant(report, "pipeline", pipeline_split)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_probe", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="diffusers folder (python -m engine make-model --arch sd15 --random)")
    src.add_argument("--tiny", action="store_true", help="the tiny random model (checks the script on a CPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batches", default="2,16,32", help="UNet batch sizes in samples (default 2,16,32)")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--pipeline-images", type=int, default=8)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    args.batches = sorted({int(b) for b in args.batches.split(",")})
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="gpu-probe-") as tmp:
        if args.tiny:
            from engine.tiny import make_tiny_model

            args.model = str(make_tiny_model(Path(tmp) / "tiny"))
        report = probe(args)
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
