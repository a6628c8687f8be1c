"""The MCP server over streamable HTTP as a shared machine sees it: the real server process, curl-like
requests (httpx) and the SDK's real client with a bearer token. Before: no authentication at all, and no
Host/Origin checks once --host was not loopback."""
import json
import os
import socket
import subprocess
import sys
import time

import httpx2 as httpx
import pytest
from anyio.from_thread import start_blocking_portal
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = free_port()
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-for-tests-0123456789\n")
    token_file.chmod(0o600)  # a token file others can read is refused
    p = subprocess.Popen([sys.executable, "-m", "prefpilot.cli", "mcp", "--transport", "streamable-http",
                          "--port", str(port), "--workspace", str(tmp_path), "--token-file", str(token_file)],
                         env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/mcp"
    for _ in range(150):
        try:
            httpx.post(url, timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.1)
    yield url, "s3cret-token-for-tests-0123456789"
    p.terminate()
    p.wait(10)


def test_tokens_origins_and_hosts(server):
    url, token = server
    assert httpx.post(url, json=INIT, headers=HEADERS).status_code == 401
    assert httpx.post(url, json=INIT, headers={**HEADERS, "authorization": "Bearer wrong"}).status_code == 401
    ok = {**HEADERS, "authorization": f"Bearer {token}"}
    assert httpx.post(url, json=INIT, headers={**ok, "origin": "http://evil.example"}).status_code == 403
    assert httpx.post(url, json=INIT, headers={**ok, "host": "evil.example:80"}).status_code == 421
    assert httpx.post(url, json=INIT, headers=ok).status_code == 200


def test_the_sdk_client_works_with_the_token(server):
    url, token = server
    with start_blocking_portal() as portal:
        transport = streamable_http_client(url, http_client=httpx.AsyncClient(
            headers={"authorization": f"Bearer {token}"}, timeout=60))
        with portal.wrap_async_context_manager(Client(transport, read_timeout_seconds=60)) as client:
            tools = {t.name for t in portal.call(client.list_tools).tools}
            assert "launch_run" in tools
            r = portal.call(client.call_tool, "explain_loss", {"loss_type": "ipo"})
            assert not r.is_error


@pytest.mark.parametrize("args,why", [(["--host", "0.0.0.0"], "token"), (["--host", "0.0.0.0", "--no-auth"], "no-auth")])
def test_unsafe_http_set_ups_are_refused_in_one_line(tmp_path, args, why):
    env = {k: v for k, v in ENV.items() if k != "PREFPILOT_MCP_TOKEN"}
    p = subprocess.run([sys.executable, "-m", "prefpilot.cli", "mcp", "--transport", "streamable-http",
                        "--port", str(free_port()), "--workspace", str(tmp_path), *args],
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and why in p.stderr


def test_a_generated_token_is_private_and_reused(tmp_path):
    from prefpilot.mcp_http import resolve_token
    token, new = resolve_token(tmp_path, "127.0.0.1", None, False)
    path = tmp_path / ".prefpilot" / "mcp-token"
    assert new and len(token) >= 32 and oct(path.stat().st_mode & 0o777) == "0o600"
    assert resolve_token(tmp_path, "127.0.0.1", None, False) == (token, False)
