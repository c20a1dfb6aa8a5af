"""Reaching the broker: credentials from the environment (never argv, never a log line) and logging in to
a real nats-server that asks for a user and password, or a token."""

# ruff: noqa: F811  (the nats fixtures are imported below, then named as test parameters)
from __future__ import annotations

import asyncio
import logging
import os

import pytest

from bot.settings import Settings, SettingsError
from bot.transport.nats import NatsTransport
from engine.__main__ import main as engine_main
from engine.nats_connect import NatsAuth, NatsConfigError, broker, connect_with_retry, redact
from engine.protocol import WorkerReady
from tests.bot.transport.conftest import (  # noqa: F401  (fixtures shared with the transport tests)
    nats_namespace,
    spawn_worker,
    start_nats_server,
    worker_logs,
)

PASSWORD = "hunter2-Zq9"
SIM = ("--simulate-seconds-per-step", "0.01", "--max-batch", "1")


def test_a_password_in_nats_url_never_reaches_the_error_line():
    env = {"DISCORD_TOKEN": "t", "ENGINE_TRANSPORT": "nats", "NATS_URL": f"http://bot:{PASSWORD}@broker:4222"}
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(env, env_file=None)
    assert "NATS_URL" in str(refused.value) and "http://***@broker:4222" in str(refused.value)
    assert PASSWORD not in str(refused.value)


def test_credentials_in_nats_url_move_out_of_the_url_the_bot_keeps():
    env = {"DISCORD_TOKEN": "t", "NATS_URL": f"tls://bot:{PASSWORD}@broker:4222"}
    settings = Settings.from_env(env, env_file=None)
    assert settings.nats_url == "tls://broker:4222"
    assert settings.nats_auth == NatsAuth(user="bot", password=PASSWORD)
    assert PASSWORD not in repr(settings)
    url, auth = broker("nats://s3cr3t-token@broker", {})
    assert (url, auth) == ("nats://broker", NatsAuth(token="s3cr3t-token"))
    assert "s3cr3t" not in repr(auth) and redact("nats://s3cr3t-token@broker") == "nats://***@broker"


@pytest.mark.parametrize(
    ("env", "why"),
    [
        ({"NATS_PASSWORD": "x"}, "without NATS_USER"),
        ({"NATS_USER": "u", "NATS_PASSWORD": "x", "NATS_TOKEN": "t"}, "one of"),
        ({"NATS_CREDS": "/nonexistent/bot.creds"}, "cannot read"),
    ],
)
def test_credentials_that_cannot_work_stop_the_start(env, why):
    with pytest.raises(NatsConfigError, match=why):
        broker("nats://broker:4222", env)


def test_a_file_that_is_no_creds_file_is_refused(tmp_path):
    creds = tmp_path / "x.creds"
    creds.write_text("password=hunter2\n")
    with pytest.raises(NatsConfigError, match="neither"):
        broker("nats://broker:4222", {"NATS_CREDS": str(creds)})


def test_the_worker_refuses_a_password_on_its_command_line(capsys):
    argv = ["serve", "--nats", f"nats://w:{PASSWORD}@127.0.0.1:4222", *SIM]
    assert engine_main(argv) == 2
    err = capsys.readouterr().err
    assert "--nats holds a user, password or token" in err and "NATS_PASSWORD" in err
    assert PASSWORD not in err


def test_the_worker_reports_a_bad_nats_url_without_its_password(capsys, monkeypatch):
    monkeypatch.setenv("NATS_URL", f"https://w:{PASSWORD}@broker:4222")
    assert engine_main(["serve", *SIM]) == 2
    err = capsys.readouterr().err
    assert "https://***@broker:4222" in err and PASSWORD not in err


@pytest.mark.parametrize("flag", [("--slots", "1000000000"), ("--heartbeat-seconds", "1e9")])
def test_the_worker_refuses_heartbeats_the_bot_would_ignore(capsys, flag):
    assert engine_main(["serve", "--nats", "nats://127.0.0.1:4222", *SIM, *flag]) == 2
    assert "cannot start" in capsys.readouterr().err


@pytest.fixture
def auth_server(tmp_path):
    server = start_nats_server(tmp_path / "auth-nats", "--user", "imagine", "--pass", PASSWORD)
    yield server
    server.stop()


async def test_bot_and_worker_log_in_with_a_user_and_password(auth_server, nats_namespace, spawn_worker):
    env = {"NATS_USER": "imagine", "NATS_PASSWORD": PASSWORD}
    worker = spawn_worker(auth_server.url, nats_namespace, "w0", *SIM, env=env)
    transport = NatsTransport(auth_server.url, namespace=nats_namespace, auth=NatsAuth.from_env(env))
    await transport.start()
    try:
        ready = await asyncio.wait_for(anext(transport.events()), 60)
        assert isinstance(ready, WorkerReady) and ready.worker_id == "w0"
    except BaseException:
        print(worker_logs([worker]))
        raise
    finally:
        await transport.close()
    assert PASSWORD not in worker.log.read_text()


async def test_token_login(tmp_path):
    server = start_nats_server(tmp_path / "token-nats", "--auth", PASSWORD)
    try:
        nc = await connect_with_retry(
            server.url, NatsAuth(token=PASSWORD), name="t", stop=asyncio.Event(), lost="-"
        )
        assert nc is not None and nc.is_connected
        await nc.close()
    finally:
        server.stop()


class LogWatch(logging.Handler):
    """Records every log line and wakes a waiter when one contains ``needle``."""

    def __init__(self, needle: str) -> None:
        super().__init__(logging.DEBUG)
        self.needle = needle
        self.lines: list[str] = []
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        self.lines.append(line)
        if self.needle in line:
            self.seen.set()


async def test_a_wrong_password_is_reported_without_the_password(auth_server):
    wrong = "wrong-" + PASSWORD
    url_with_password = auth_server.url.replace("nats://", f"nats://imagine:{wrong}@")
    # Refused, said so, and stopped while nats-py was still retrying: connect_with_retry returned.
    lines = await asyncio.wait_for(refused_login(url_with_password, NatsAuth()), 30)
    assert not any(wrong in line for line in lines), lines


async def test_nkey_seed_file_login(tmp_path):
    import nkeys

    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    (tmp_path / "server.conf").write_text(f"authorization {{ users = [ {{ nkey: {public} }} ] }}\n")
    seed_file = tmp_path / "worker.nk"
    seed_file.write_bytes(seed + b"\n")
    server = start_nats_server(tmp_path / "nkey-nats", "-c", str(tmp_path / "server.conf"))
    try:
        await asyncio.wait_for(refused_login(server.url, NatsAuth()), 30)  # the server does ask for the key
        url, auth = broker(server.url, {}, creds_file=seed_file)  # as `--nats-creds FILE` passes it
        nc = await connect_with_retry(url, auth, name="t", stop=asyncio.Event(), lost="-")
        assert nc is not None and nc.is_connected
        await nc.close()
    finally:
        server.stop()


async def refused_login(url: str, auth: NatsAuth) -> list[str]:
    """The log lines of a login the server refuses, up to its refusal (the attempt is stopped then)."""
    watch = LogWatch("Authorization")
    logger = logging.getLogger("engine.nats_connect")
    logger.addHandler(watch)
    stop = asyncio.Event()
    attempt = asyncio.create_task(connect_with_retry(url, auth, name="t", stop=stop, lost="-"))
    try:
        await watch.seen.wait()
    finally:
        stop.set()
        logger.removeHandler(watch)
    assert await attempt is None
    return watch.lines
