"""Device and dtype choice: CUDA (fp16, or bf16 on request), Apple MPS (fp16), CPU (fp32)."""

from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")  # and cuda:N
DTYPE_CHOICES = ("auto", "fp16", "bf16", "fp32")

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def resolve_device(spec: str | None = "auto") -> torch.device:
    """``auto``: CUDA when present, else MPS, else CPU. Raises ``ValueError`` for a device that is absent."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {spec!r}: use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} asked for, but this torch build sees no CUDA GPU")
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r} asked for, but only {torch.cuda.device_count()} GPU(s) exist")
        return torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' asked for, but Apple MPS is not available")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {spec!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


def resolve_dtype(spec: str | None, device: torch.device) -> torch.dtype:
    """``auto``: fp16 on CUDA and MPS, fp32 on CPU. Half precision on a CPU is refused (slow and unsupported
    by several CPU kernels)."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if spec not in _DTYPES:
        raise ValueError(f"unknown dtype {spec!r}: use one of {', '.join(DTYPE_CHOICES)}")
    dtype = _DTYPES[spec]
    if device.type == "cpu" and dtype != torch.float32:
        raise ValueError(f"dtype {spec} is not supported on the CPU; use fp32")
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("bf16 asked for, but this GPU does not support bfloat16")
    return dtype


def describe(device: torch.device) -> str:
    """A human-readable device name for WorkerReady, e.g. ``cuda:0 (NVIDIA H100 80GB HBM3)``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


def is_oom(exc: BaseException) -> bool:
    """True for an accelerator out-of-memory error (CUDA, or MPS's RuntimeError)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
