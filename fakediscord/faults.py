"""Outages: Discord answering a class of requests with an error for as long as a test says, not N times.

``fake.fail_next`` refuses a counted number of requests, which suits "the next post fails". An incident
is different: every matching request fails until it is over, however often the bot tries, and the test
wants to know what the bot tried meanwhile. ::

    outage = fake.faults.outage("*", rf"/channels/{channel.id}/messages", status=503)
    ...  # the bot's posts there are refused; everything else works
    outage.end()
    assert outage.refused  # (method, path) of every request it answered

Requests reach the outage after authentication and before rate limiting (a request Discord's edge refuses
never counts against a bucket). Not for 429: rate limits are ``fake.rate_limits``' job, with the headers
discord.py reads; an outage answers 4xx/5xx JSON errors like Discord's (``{"code", "message"}``).
Note discord.py retries 500, 502, 504 and 524 itself (sleeping 1 s, 3 s, 5 s ... between tries) and
raises ``DiscordServerError`` on other 5xx (503) at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from aiohttp import web

from .wire import json_response


@dataclass(eq=False)
class Outage:
    method: str  # "*" for any
    pattern: re.Pattern[str]  # searched in the request path
    status: int
    code: int = 0
    active: bool = True
    refused: list[tuple[str, str]] = field(default_factory=list)  # (method, path) answered with the error

    def matches(self, method: str, path: str) -> bool:
        return self.active and self.method in ("*", method) and self.pattern.search(path) is not None

    def end(self) -> None:
        """The incident is over: matching requests are served again from now on."""
        self.active = False


@dataclass
class Faults:
    outages: list[Outage] = field(default_factory=list)

    def outage(self, method: str, path_regex: str, *, status: int = 503, code: int = 0) -> Outage:
        """From now until ``.end()``, answer every request matching (``method`` or ``"*"``, regex searched
        in the path) with ``status``."""
        if status == 429 or not 400 <= status <= 599:
            raise ValueError("an outage answers a 4xx/5xx error other than 429 (see fake.rate_limits)")
        outage = Outage(method.upper(), re.compile(path_regex), status, code)
        self.outages.append(outage)
        return outage

    def answer(self, request: web.Request) -> web.Response | None:
        """The error an active outage gives ``request``, or None to serve it."""
        for outage in self.outages:
            if outage.matches(request.method, request.path):
                outage.refused.append((request.method, request.path))
                return json_response(
                    {"code": outage.code, "message": f"{outage.status}: injected outage"}, outage.status
                )
        self.outages = [o for o in self.outages if o.active]
        return None
