"""The MCP server over streamable HTTP, safe on a shared machine.

The SDK only turns on its Host/Origin checks for loopback hosts and has no authentication of its own,
so any local process (and, with --host 0.0.0.0, anyone on the network) could launch training. Here:
  - a bearer token is required by default: `--token-file`/$PREFPILOT_MCP_TOKEN, or generated on first start
    into <workspace>/.prefpilot/mcp-token (mode 0600) and printed once with a client config to paste;
  - `--no-auth` is accepted on loopback only, and logged loudly;
  - a non-loopback --host needs an explicit token (not a generated one);
  - Host and Origin headers are checked against an allow-list whatever the host (421 / 403).
"""
from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import stat
from pathlib import Path

from .errors import PrefpilotError

log = logging.getLogger("prefpilot.mcp")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


TOKEN_MAX_BYTES = 4096


def _check_token(token: str, where: str) -> str:
    """A bearer token travels in an HTTP header: at least 16 characters, printable ASCII without spaces (what
    clients can send; a non-ASCII one could never match and would fail at the first request, not at start)."""
    if len(token) < 16:
        raise PrefpilotError(f"{where}: the token is shorter than 16 characters", code="bad_token")
    if not all("!" <= c <= "~" for c in token):
        raise PrefpilotError(f"{where}: the token must be printable ASCII without spaces (an HTTP header carries "
                             "it); generate one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`",
                             code="bad_token")
    return token


def _read_token(path: Path, what: str = "--token-file", follow: bool = True) -> str:
    """The token in ``path``: a regular file only this user can read (a FIFO, /dev/zero or a world-readable
    file is refused, never waited on or trusted), UTF-8, at least 16 characters."""
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        why = "it is a symbolic link (refused)" if not follow and os.path.islink(path) else exc.strerror
        raise PrefpilotError(f"{what} {path}: cannot read it ({why})", code="bad_token") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PrefpilotError(f"{what} {path}: not a regular file; put the token in a file", code="bad_token")
        if st.st_mode & 0o077:
            raise PrefpilotError(f"{what} {path}: readable or writable by other users (mode "
                                 f"{stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}`", code="bad_token")
        if st.st_uid != os.getuid():
            raise PrefpilotError(f"{what} {path}: owned by another user; use a token file of your own",
                                 code="bad_token")
        data = fh.read(TOKEN_MAX_BYTES + 1)
    if len(data) > TOKEN_MAX_BYTES:
        raise PrefpilotError(f"{what} {path}: over {TOKEN_MAX_BYTES} bytes; a token file holds one token",
                             code="bad_token")
    try:
        token = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise PrefpilotError(f"{what} {path}: not UTF-8 text; write the token as one line of printable ASCII",
                             code="bad_token") from None
    return _check_token(token, f"{what} {path}")


def resolve_token(workspace: Path, host: str, token_file: str | None, no_auth: bool) -> tuple[str | None, bool]:
    """(token or None, whether it was generated just now). Refuses what would be unsafe."""
    loopback = host in LOOPBACK
    if no_auth:
        if not loopback:
            raise PrefpilotError(f"--no-auth with --host {host}: anyone who can reach this address could start "
                                 "training; --no-auth is only accepted on 127.0.0.1/localhost", code="unsafe_host")
        return None, False
    if token_file:
        return _read_token(Path(token_file)), False
    if os.environ.get("PREFPILOT_MCP_TOKEN"):
        return _check_token(os.environ["PREFPILOT_MCP_TOKEN"].strip(), "$PREFPILOT_MCP_TOKEN"), False
    if not loopback:
        raise PrefpilotError(f"--host {host} is reachable from other machines: give a token with --token-file or "
                             "$PREFPILOT_MCP_TOKEN (a generated one is only for 127.0.0.1)", code="unsafe_host")
    folder = workspace / ".prefpilot"
    path = folder / "mcp-token"
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise PrefpilotError(f"{folder} is a symbolic link or not a folder: a token there could be planted; remove "
                             "it, or give --token-file", code="bad_token")
    if os.path.lexists(path):  # only a private regular file of ours is reused
        return _read_token(path, "the generated token", follow=False), False
    folder.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)  # 0600 from the start
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token, True


class BearerAuth:
    """ASGI middleware: every HTTP request needs `Authorization: Bearer <token>` (constant-time compare)."""

    def __init__(self, app, token: str):
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                body = json.dumps({"error": "unauthorized: send Authorization: Bearer <token> (the token file is "
                                            "printed when the server starts)"}).encode()
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"www-authenticate", b'Bearer realm="prefpilot"')]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def security_settings(host: str, port: int, extra_hosts=(), extra_origins=()):
    from mcp.server.transport_security import TransportSecuritySettings
    hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
    origins = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]
    if host not in LOOPBACK and host not in ("0.0.0.0", "::"):
        hosts.append(f"{host}:*")
        origins.append(f"http://{host}:*")
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts + list(extra_hosts),
                                     allowed_origins=origins + list(extra_origins))


def serve_http(server, workspace: Path, host: str, port: int, *, token_file=None, no_auth=False,
               allowed_hosts=(), allowed_origins=()) -> int:
    import uvicorn
    token, generated = resolve_token(workspace, host, token_file, no_auth)
    app = server.streamable_http_app(transport_security=security_settings(host, port, allowed_hosts,
                                                                          allowed_origins), host=host)
    if token is None:
        log.warning("prefpilot MCP over HTTP WITHOUT AUTHENTICATION on %s:%d: any local process can launch "
                    "training. Use it only on a single-user machine.", host, port)
    else:
        app = BearerAuth(app, token)
        if generated:
            cfg = {"mcpServers": {"prefpilot": {"type": "http", "url": f"http://{host}:{port}/mcp",
                                                "headers": {"Authorization": f"Bearer {token}"}}}}
            print(f"prefpilot: MCP token written to {workspace / '.prefpilot' / 'mcp-token'} (mode 0600); "
                  f"client config:\n{json.dumps(cfg, indent=1)}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0
