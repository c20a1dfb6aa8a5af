"""HTTP plumbing shared by the fake's routes: Discord-shaped JSON answers and request bodies."""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import BodyPartReader, web

from .models import ApiError, Upload

MAX_REQUEST_BODY = 25 * 1024 * 1024


def json_response(data: Any, status: int = 200) -> web.Response:
    # Exactly "application/json": discord.py only decodes JSON when the header matches verbatim, and
    # web.json_response would append "; charset=utf-8".
    return web.Response(
        status=status, body=json.dumps(data).encode(), headers={"Content-Type": "application/json"}
    )


def error_response(err: ApiError) -> web.Response:
    return json_response(err.body(), err.status)


def no_content() -> web.Response:
    return web.Response(status=204)


async def read_body(request: web.Request) -> tuple[Any, list[Upload]]:
    """JSON body, or multipart ``payload_json`` + ``files[n]`` parts."""
    if request.content_type.startswith("multipart/"):
        payload: Any = {}
        uploads: list[Upload] = []
        reader = await request.multipart()
        total = 0
        async for part in reader:
            if not isinstance(part, BodyPartReader):  # a multipart nested in a part: Discord has none
                raise ApiError(400, 50035, "Invalid Form Body")
            name = part.name or ""
            if name == "payload_json":
                payload = json.loads(await part.text())
            elif m := re.fullmatch(r"files\[(\d+)\]", name):
                data = await part.read(decode=False)
                total += len(data)
                if total > MAX_REQUEST_BODY:  # chunked uploads carry no Content-Length
                    raise ApiError(413, 40005, "Request entity too large")
                ctype = part.headers.get("Content-Type", "application/octet-stream")
                filename = getattr(part, "filename", None) or f"file{m.group(1)}"
                uploads.append(Upload(int(m.group(1)), filename, bytes(data), ctype))
        return payload, uploads
    raw = await request.read()
    return (json.loads(raw) if raw else {}), []


# When a REST request reached "Discord" (after any injected latency): Discord's deadlines count to here.
ARRIVED = web.RequestKey("arrived", float)
