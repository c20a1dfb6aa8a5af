import asyncio
import io

import pytest

from engine import protocol as p


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
