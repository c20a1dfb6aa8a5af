import asyncio
import io
import json

import pytest

from engine import protocol as p
from engine.wire_checks import PREVIEW_BYTES, REASON_CHARS


def test_roundtrip_with_blobs():
    msg = p.JobDone("j1", [p.ImageResult(0, 5, b"\x89PNG..."), p.ImageResult(1, 6, b"")], 1.5, "m")
    assert p.decode(p.encode(msg)) == msg
    req = p.GenerateRequest("j2", "cat", init_image=b"abc", kind="img2img")
    back = p.decode(p.encode(p.Submit(req)))
    assert back == p.Submit(req)
    assert back.request.kind is p.JobKind.IMG2IMG
    assert back.request.seeds == [0]


def test_stream_framing_sync_and_async():
    buf = io.BytesIO()
    msgs = [p.WorkerReady("w", "m", "cpu", 1), p.JobProgress("j", 1, 4, b"img"), p.Shutdown()]
    for m in msgs:
        p.write_frame(buf, m)
    buf.seek(0)
    assert [p.read_frame(buf) for _ in msgs] == msgs
    assert p.read_frame(buf) is None

    async def read_all():
        reader = asyncio.StreamReader()
        reader.feed_data(buf.getvalue())
        reader.feed_eof()
        return [await p.read_frame_async(reader) for _ in range(4)]

    assert asyncio.run(read_all()) == [*msgs, None]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x00\x00\x05{}",
        b"\x00\x00\x00\x02{}",
        len(b'{"m": {"$t": "Nope"}, "b": []}').to_bytes(4, "big") + b'{"m": {"$t": "Nope"}, "b": []}',
        len(b'{"m": {"$b": 3}, "b": []}').to_bytes(4, "big") + b'{"m": {"$b": 3}, "b": []}',
    ],
)
def test_garbage_is_a_protocol_error(data):
    with pytest.raises(p.ProtocolError):
        p.decode(data)


def test_seeds_wrap_like_a1111():
    assert p.GenerateRequest("j", "x", seed=2**32 - 1, count=2).seeds == [2**32 - 1, 0]


# ------------------------------------------------------------------------- strict decoding of forged frames


def forged(message: object, *blobs: bytes) -> bytes:
    """A frame body written by hand, as anyone who can publish on the broker could."""
    header = json.dumps({"m": message, "b": [len(b) for b in blobs]}).encode()
    return len(header).to_bytes(4, "big") + header + b"".join(blobs)


def job_done(**image: object) -> dict:
    fields = {"index": 0, "seed": 1, "png": {"$b": 0}, "$t": "ImageResult", **image}
    return {"$t": "JobDone", "job_id": "abc123", "images": [fields]}


def test_a_forged_frame_like_the_real_one_decodes():
    back = p.decode(forged(job_done(), b"\x89PNG"))
    assert back == p.JobDone("abc123", [p.ImageResult(0, 1, b"\x89PNG")])


@pytest.mark.parametrize(
    ("message", "blobs", "why"),
    [
        (job_done(index="0/../../x"), [b"png"], "index"),
        (job_done(index=-1), [b"png"], "index"),
        (job_done(index=16), [b"png"], "index"),  # a job has 16 images at most
        (job_done(index=True), [b"png"], "index"),  # a bool is no index
        (job_done(seed=2**40), [b"png"], "seed"),
        (job_done(png="not bytes"), [b"png"], "png"),
        (job_done(png={"$b": -1}), [b"png"], "blob"),  # a negative index would pick the last blob
        (job_done(png={"$b": 0, "x": 1}), [b"png"], "blob"),
        (job_done(nsfw="no"), [b"png"], "nsfw"),
        (job_done(extra=1), [b"png"], "unknown field"),
        ({**job_done(), "job_id": "../../etc"}, [b"png"], "job_id"),
        ({**job_done(), "job_id": "a.b"}, [b"png"], "job_id"),  # one subject token
        ({**job_done(), "job_id": 12}, [b"png"], "job_id"),
        ({**job_done(), "images": [{"$t": "JobCancelled", "job_id": "x"}]}, [b"png"], "images"),
        ({**job_done(), "images": job_done()["images"] * 2}, [b"png"], "same index"),
        ({"$t": "ImageResult", "index": 0, "seed": 1, "png": {"$b": 0}}, [b"png"], "no message"),
        ({"$t": "Submit", "request": {"$t": "GenerateRequest", "job_id": "j", "prompt": {"$b": 0}}}, [b"x"],
         "prompt"),
        ({"$t": "Submit", "request": {"$t": "GenerateRequest", "job_id": "j", "prompt": "x", "count": 10**9}},
         [], "count"),
        ({"$t": "Submit", "request": {"$t": "GenerateRequest", "job_id": "j", "prompt": "x", "kind": "rm"}},
         [], "kind"),
        ({"$t": "Submit", "request": {"$t": "Cancel", "job_id": "j"}}, [], "request"),
        ({"$t": "Submit", "request": {"job_id": "j", "prompt": "x"}}, [], "request"),
        ({"$t": "JobFailed", "job_id": "j", "reason": "x" * 5000}, [], "reason"),
        ({"$t": "WorkerReady", "worker_id": "w\n2 fake log line", "model": "m", "device": "cpu", "pid": 1},
         [], "worker_id"),
        ({"$t": "WorkerReady", "worker_id": "w", "model": "m", "device": "cpu", "pid": 1, "max_batch": 0},
         [], "max_batch"),
        ({"$t": "JobProgress", "job_id": "j", "step": "1", "total": 2}, [], "step"),
    ],
)  # fmt: skip
def test_forged_fields_are_refused(message, blobs, why):
    with pytest.raises(p.ProtocolError, match=why):
        p.decode(forged(message, *blobs))


def test_numbers_json_cannot_hold_are_refused():
    body = forged({"$t": "Submit", "request": {"$t": "GenerateRequest", "job_id": "j", "prompt": "x",
                                               "cfg_scale": 1.5}})  # fmt: skip
    with pytest.raises(p.ProtocolError, match="NaN"):
        p.decode(body.replace(b"1.5", b"NaN "))


def test_blobs_over_their_cap_are_refused():
    fields = {"$t": "JobProgress", "job_id": "j", "step": 1, "total": 2, "preview": {"$b": 0}}
    assert p.decode(forged(fields, b"x" * 1000)).preview == b"x" * 1000
    with pytest.raises(p.ProtocolError, match="preview"):
        p.decode(forged(fields, b"x" * (PREVIEW_BYTES + 1)))


def test_stray_bytes_and_deep_nesting_are_protocol_errors():
    with pytest.raises(p.ProtocolError, match="stray"):
        p.decode(p.encode(p.Cancel("j")) + b"junk")
    nested = b'{"m": {"$t": "Cancel", "job_id": "j", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b'}, "b": []}'
    with pytest.raises(p.ProtocolError):
        p.decode(len(nested).to_bytes(4, "big") + nested)


def test_a_long_failure_reason_is_cut_when_made_and_then_travels():
    failed = p.JobFailed("j", "boom " * 2000)
    assert len(failed.reason) == REASON_CHARS
    assert p.decode(p.encode(failed)) == failed


def test_whole_numbers_are_accepted_for_float_fields():
    body = forged({"$t": "Submit", "request": {"$t": "GenerateRequest", "job_id": "j", "prompt": "x",
                                               "cfg_scale": 7}})  # fmt: skip
    request = p.decode(body).request
    assert request.cfg_scale == 7.0 and type(request.cfg_scale) is float
