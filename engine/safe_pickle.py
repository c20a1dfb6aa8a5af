"""Pickled weights (``.ckpt``/``.pt``/``.pth``/``.bin``) read without running their code.

A pickle is a program: unpickling one can call any function it names (``os.system`` included). These files
are read with torch's ``weights_only`` unpickler, which builds only tensors, storages and plain containers
(dicts, lists, tuples, numbers, strings) and refuses every other global, like AUTOMATIC1111's restricted
unpickler does. A1111 also lets through a few globals that old CompVis checkpoints carry beside their
weights (PyTorch Lightning's ``ModelCheckpoint`` callback state, numpy scalars such as a best score); here
they become inert :class:`Dropped` placeholders: nothing of numpy or Lightning is imported or called, and
the weights never need them.

A file that asks for anything else is refused with :class:`PickleRefused`, naming the globals it asked for
and the opt-in (``ALLOW_PICKLE_CHECKPOINTS=true``, which loads it with the full unpickler: only for files
one trusts). A file that is not a readable checkpoint, or is over the size allowed for its kind, gives
:class:`PickleLoadError`.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

OPT_IN = (
    "convert it to .safetensors on a machine you trust (python -m engine convert --allow-pickle), "
    "or set ALLOW_PICKLE_CHECKPOINTS=true (worker flag --allow-pickle) if you trust the file"
)

# Upper bounds by kind: beyond them a file is refused before a byte of it is unpickled. Full-precision SDXL
# checkpoints with EMA weights are ~14 GB; LoRAs rarely pass 1 GB; embeddings are kilobytes.
MAX_CHECKPOINT_BYTES = 24 << 30
MAX_LORA_BYTES = 4 << 30
MAX_EMBEDDING_BYTES = 64 << 20


class PickleRefused(ValueError):
    """The file needs globals the safe unpickler does not allow; the message names them and the opt-in."""

    def __init__(self, path: Path, globals_: list[str]) -> None:
        self.globals = globals_
        needs = ", ".join(globals_[:5]) + (" …" if len(globals_) > 5 else "") if globals_ else "code"
        super().__init__(
            f"refusing to load {path.name}: it is a pickle that needs {needs} to load, which the safe "
            "unpickler does not allow (it could run code or exhaust memory); " + OPT_IN
        )


class PickleLoadError(ValueError):
    """Not a readable PyTorch checkpoint (malformed, truncated, too large); the message says which file."""


class Dropped:
    """What an allowed non-weight global (Lightning callback state, a numpy scalar) unpickles to: it takes
    any arguments and state and keeps none of them."""

    def __new__(cls, *args: object, **kwargs: object) -> Dropped:
        return super().__new__(cls)

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass

    def __repr__(self) -> str:
        return "<dropped>"


class Kept(Dropped):
    """What an allowed container module unpickles to (``nn.ParameterDict``, in which old A1111 embeddings
    keep their vectors): its pickled attributes, such as ``_parameters``, as plain data, and no behaviour."""

    def __setstate__(self, state: object) -> None:
        if isinstance(state, dict):
            self.__dict__.update({str(k): v for k, v in state.items()})


# The globals A1111's restricted unpickler allows beyond torch's own list, as inert stand-ins.
_STAND_IN_NAMES = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.model_checkpoint",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.ndarray",
    "numpy.dtype",
    *(f"numpy.dtypes.{t}DType" for t in ("Float64", "Float32", "Float16", "Int64", "Int32", "Bool")),
)


def _stand_ins() -> list[Any]:
    return [
        *((Dropped, name) for name in _STAND_IN_NAMES),
        (Kept, "torch.nn.modules.container.ParameterDict"),
        (set, "__builtin__.set"),
    ]


@contextmanager
def allowed_globals() -> Iterator[None]:
    """Inside: torch's ``weights_only`` loads (ours, and diffusers' own) accept the stand-ins too."""
    import torch

    with torch.serialization.safe_globals(_stand_ins()):
        yield


def _is_zip(path: Path) -> bool:
    return zipfile.is_zipfile(path)


def unsafe_globals(path: Path) -> list[str]:
    """The globals of a zip-format checkpoint that the safe unpickler would refuse, found by reading the
    pickle's opcodes without running them ([] for the legacy format, whose refusals name one global)."""
    import torch

    if not _is_zip(path):
        return []
    with allowed_globals():
        try:
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except Exception:  # a malformed file: the load itself says why
            return []


# Allowed by torch's weights-only unpickler but never needed for weights, and a memory bomb in a few bytes:
# ``bytearray(10**11)`` allocates and zero-fills 100 GB.
_BOMBS = {"builtins.bytearray", "__builtin__.bytearray"}
_MAX_PICKLES = 5  # the legacy format: magic number, version, system info, the object, storage keys


def _pickle_globals(path: Path) -> set[str]:
    """Every global the pickle(s) of ``path`` name, read from their opcodes without running them."""
    import pickletools

    found: set[str] = set()

    def scan(stream: Any, pickles: int) -> None:
        for _ in range(pickles):
            try:
                for opcode, arg, _pos in pickletools.genops(stream):
                    if opcode.name in ("GLOBAL", "INST") and isinstance(arg, str):
                        found.add(arg.replace(" ", ".", 1))
                    elif opcode.name == "STACK_GLOBAL":
                        found.add("STACK_GLOBAL")  # torch.save never writes it (protocol 2)
            except ValueError:  # past the last pickle, or not a pickle: the load says why
                return

    if _is_zip(path):
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if name.endswith("data.pkl"):
                    with archive.open(name) as stream:
                        scan(stream, 1)
    else:
        with path.open("rb") as stream:
            scan(stream, _MAX_PICKLES)
    return found


def _refused_global(exc: Exception) -> str | None:
    """The global named by torch's weights-only refusal, e.g. ``posix.system``."""
    import re

    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return found.group(1) if found else None


def load(
    path: str | Path,
    *,
    allow_pickle: bool = False,
    max_bytes: int = MAX_CHECKPOINT_BYTES,
) -> Any:
    """The object pickled in ``path``, with tensors on the CPU (memory-mapped for zip-format files, so a
    large checkpoint costs no RAM until its tensors are used).

    :class:`PickleRefused` when it needs more than the safe unpickler allows (unless ``allow_pickle``: then
    the full unpickler reads it), :class:`PickleLoadError` when it is not a readable checkpoint."""
    import torch

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise PickleLoadError(f"cannot read {path.name}: {exc.strerror or exc}") from exc
    if size > max_bytes:
        raise PickleLoadError(
            f"{path.name} is {size / (1 << 30):.1f} GB, over the {max_bytes / (1 << 30):.1f} GB allowed for "
            "this kind of file"
        )
    zipped = _is_zip(path)
    try:
        bombs = sorted(_pickle_globals(path) & (_BOMBS | {"STACK_GLOBAL"}))
    except (OSError, zipfile.BadZipFile, RuntimeError) as exc:
        raise _malformed(path, exc) from exc
    if bombs and not allow_pickle:
        raise PickleRefused(path, bombs)
    try:
        with allowed_globals():
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as exc:
        named = unsafe_globals(path) or ([g] if (g := _refused_global(exc)) else [])
        if not named and "GLOBAL" not in str(exc) and "reduce" not in str(exc).lower():
            raise _malformed(path, exc) from exc
        if not allow_pickle:
            raise PickleRefused(path, named) from None  # torch's own text advises allowlisting: not here
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError, TypeError, MemoryError) as exc:
        raise _malformed(path, exc) from exc
    except RecursionError as exc:
        raise PickleLoadError(f"{path.name} is nested too deeply to be a checkpoint") from exc
    try:  # opted in: the file is trusted
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise _malformed(path, exc) from exc


def _malformed(path: Path, exc: BaseException) -> PickleLoadError:
    text = str(exc)
    # torch wraps the unpickler's own words in advice about weights_only that does not apply here.
    text = text.split("WeightsUnpickler error:", 1)[-1]
    reason = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return PickleLoadError(f"{path.name} is not a readable PyTorch checkpoint ({reason[:200]})")


def state_dict(obj: Any) -> dict[str, Any]:
    """The tensors of a loaded checkpoint: inside any ``state_dict`` wrappers (CompVis/Lightning files keep
    the weights there), tensor values only (``global_step``, callbacks and the like are left out)."""
    import torch

    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise PickleLoadError(f"expected a dict of tensors, found {type(obj).__name__}")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
