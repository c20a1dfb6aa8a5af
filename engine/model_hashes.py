"""A checkpoint's hash, computed once per version of the file.

Hashing a 7 GB SDXL file takes tens of seconds; it is needed for the infotext's ``Model hash`` every
time a model is loaded. Like AUTOMATIC1111's ``cache.json`` the SHA-256 is kept by path with the file's
size and mtime, in memory and in a small JSON file in the engine's cache folder, so a restart or a model
switch does not read the file again; a file that changed (another size or mtime) is hashed again.

The cache file is untrusted input like any other: read only up to :data:`CACHE_BYTES`, every entry
type-checked, a broken file ignored (and replaced on the next write). Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_BYTES = 1 << 20  # about 6,000 entries; a file over this is ignored
MAX_ENTRIES = 2000  # the newest are kept when there are more
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class _Entry:
    size: int
    mtime_ns: int
    sha256: str


def default_cache_file() -> Path:
    from engine.sd15 import cache_dir  # the engine's one cache folder (ENGINE_CACHE_DIR, XDG_CACHE_HOME)

    return cache_dir() / "hashes.json"


def _read(path: Path) -> dict[str, _Entry]:
    try:
        with open(path, "rb") as f:
            raw = f.read(CACHE_BYTES + 1)
    except OSError:
        return {}
    if len(raw) > CACHE_BYTES:
        log.warning("ignoring the hash cache %s: over %d bytes", path, CACHE_BYTES)
        return {}
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        log.warning("ignoring the hash cache %s: not JSON", path)
        return {}
    entries: dict[str, _Entry] = {}
    if not isinstance(data, dict):
        return entries
    for key, value in data.items():
        if not isinstance(value, dict):
            continue
        size, mtime, digest = value.get("size"), value.get("mtime_ns"), value.get("sha256")
        if (
            isinstance(size, int)
            and isinstance(mtime, int)
            and isinstance(digest, str)
            and _SHA256.fullmatch(digest)
            and not isinstance(size, bool)
        ):
            entries[key] = _Entry(size, mtime, digest)
    return entries


class HashCache:
    """SHA-256 of files, by (path, size, mtime); ``file`` None keeps it in memory only."""

    def __init__(self, file: Path | None) -> None:
        self.file = file
        self._lock = threading.Lock()
        self._memory: dict[str, _Entry] = {}
        self.hashed = 0  # files read to hash them (tests count these)

    def sha256(self, path: str | os.PathLike[str]) -> str:
        real = os.path.realpath(path)
        st = os.stat(real)
        with self._lock:
            hit = self._memory.get(real)
            if hit is None and self.file is not None:
                hit = _read(self.file).get(real)
            if hit is not None and (hit.size, hit.mtime_ns) == (st.st_size, st.st_mtime_ns):
                self._memory[real] = hit
                return hit.sha256
        digest = hashlib.sha256()
        with open(real, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        entry = _Entry(st.st_size, st.st_mtime_ns, digest.hexdigest())
        with self._lock:
            self.hashed += 1
            self._memory[real] = entry
            if self.file is not None:
                self._save(real, entry)
        return entry.sha256

    def _save(self, real: str, entry: _Entry) -> None:
        """Merge ``entry`` into the file (another worker may have added its own) and replace it whole."""
        assert self.file is not None
        entries = _read(self.file)
        entries.pop(real, None)
        entries[real] = entry
        kept = list(entries.items())[-MAX_ENTRIES:]
        body = {k: {"size": e.size, "mtime_ns": e.mtime_ns, "sha256": e.sha256} for k, e in kept}
        tmp: str | None = None
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.file.parent, prefix=".hashes-", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(body, f)
            os.replace(tmp, self.file)
        except OSError as exc:  # a read-only cache folder costs a re-hash next start, nothing more
            log.warning("cannot write the hash cache %s: %s", self.file, exc)
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)


_default: HashCache | None = None
_default_lock = threading.Lock()


def default_cache() -> HashCache:
    global _default
    with _default_lock:
        if _default is None:
            _default = HashCache(default_cache_file())
        return _default
