"""A checkpoint is hashed once per version of the file; the cache file is untrusted."""

from __future__ import annotations

import hashlib
import json
import os

from engine.model_hashes import CACHE_BYTES, HashCache


def test_hash_is_read_once_per_size_and_mtime_and_survives_a_restart(tmp_path):
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"weights one")
    cache_file = tmp_path / "cache" / "hashes.json"
    cache = HashCache(cache_file)
    assert cache.sha256(model) == hashlib.sha256(b"weights one").hexdigest()
    assert cache.sha256(model) == hashlib.sha256(b"weights one").hexdigest()
    assert cache.hashed == 1

    restarted = HashCache(cache_file)  # a new process: the file answers, the model is not read
    assert restarted.sha256(model) == hashlib.sha256(b"weights one").hexdigest()
    assert restarted.hashed == 0

    st = model.stat()
    model.write_bytes(b"weights two!")  # another size
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert restarted.sha256(model) == hashlib.sha256(b"weights two!").hexdigest()
    model.write_bytes(b"weights 3!!!")  # the same size, a new mtime
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert restarted.sha256(model) == hashlib.sha256(b"weights 3!!!").hexdigest()
    assert restarted.hashed == 2


def test_a_broken_or_lying_cache_file_is_ignored(tmp_path):
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"the real weights")
    st = model.stat()
    real = hashlib.sha256(b"the real weights").hexdigest()
    cache_file = tmp_path / "hashes.json"
    for body in (
        b"{not json",
        b"[1, 2]",
        json.dumps({str(model.resolve()): {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": "x"}}),
        json.dumps({str(model.resolve()): {"size": True, "mtime_ns": st.st_mtime_ns, "sha256": "0" * 64}}),
        b"{" + b" " * CACHE_BYTES + b"}",  # too big to read
    ):
        cache_file.write_bytes(body if isinstance(body, bytes) else body.encode())
        cache = HashCache(cache_file)
        assert cache.sha256(model) == real
        assert cache.hashed == 1
    # what it wrote over the broken file is valid again
    assert HashCache(cache_file).sha256(model) == real
