"""Test registries: Debian's docker-registry (distribution 2.8) on 127.0.0.1, in a temp dir. The session fixtures
(in conftest.py) that start them:

`registry`          anonymous, plain HTTP
`private_registry`  htpasswd (Basic) auth; user/password in .credentials
`token_registry`    Bearer token auth against a token server of our own (JWT signed with openssl)
`tls_registry`      HTTPS with a self-signed certificate (for registries.conf `insecure`)

Each yields a `Registry` with .host ("127.0.0.1:PORT") and .push(repo, tag, image_or_index).
The processes are killed and their directories deleted even when a test fails.

To run containers from busybox in a daemon test:

    def test_x(daemon_factory, registry, busybox_ref, tmp_path):
        conf = write_registries_conf(tmp_path / "registries.conf", registry)
        daemon = daemon_factory({"storage": {"registries_conf": str(conf)}})
        image_id = daemon.client().pull(busybox_ref)
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

from tests.imagebuild import Image, Index, push_to_registry

REGISTRY_BIN = "/usr/bin/docker-registry"
TOKEN_SERVICE = "pycri-test-registry"
TOKEN_ISSUER = "pycri-test-issuer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Registry:
    host: str
    credentials: tuple[str, str] | None = None
    token_server: "TokenServer | None" = None
    tls: bool = False

    def push(self, repository: str, tag: str, item: Image | Index) -> str:
        bearer = self.token_server.issue(repository, ["pull", "push"]) if self.token_server else None
        return push_to_registry(self.host, repository, tag, item, auth=None if bearer else self.credentials,
                                bearer=bearer, tls=self.tls)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """Issues JWTs that docker-registry's `auth: token` accepts, to callers with the right password."""

    def __init__(self, workdir: Path, username: str, password: str):
        self.key = workdir / "token.key"
        self.cert = workdir / "token.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key),
                        "-out", str(self.cert), "-days", "2", "-subj", "/CN=pycri-token"],
                       check=True, capture_output=True, timeout=60)
        der = subprocess.run(["openssl", "x509", "-in", str(self.cert), "-outform", "DER"], check=True,
                             capture_output=True, timeout=30).stdout
        self.x5c = base64.b64encode(der).decode()
        self.username, self.password = username, password
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, form: dict[str, str], basic_ok: bool) -> None:
                server.requests.append(dict(form, method=self.command))
                refresh_ok = form.get("grant_type") == "refresh_token" and form.get("refresh_token") == "refresh-" + server.password
                if not (basic_ok or refresh_ok):
                    self.send_response(401)
                    self.end_headers()
                    return
                scope = form.get("scope", "")
                _, name, actions = (scope.split(":") + ["", "", ""])[:3]
                token = server.issue(name, actions.split(","))
                body = json.dumps({"token": token, "access_token": token, "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
                expected = "Basic " + base64.b64encode(f"{server.username}:{server.password}".encode()).decode()
                self._answer(query, self.headers.get("Authorization") == expected)

            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                self._answer(form, False)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def issue(self, repository: str, actions: list[str]) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {"iss": TOKEN_ISSUER, "sub": self.username, "aud": TOKEN_SERVICE, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(),
                  "access": [{"type": "repository", "name": repository, "actions": [a for a in actions if a]}]}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)], input=signing_input.encode(),
                                   check=True, capture_output=True, timeout=30).stdout
        return f"{signing_input}.{_b64url(signature)}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def start_registry(workdir: Path, auth_yaml: str = "", tls: tuple[Path, Path] | None = None) -> Iterator[str]:
    """Run docker-registry on a free loopback port until the generator is closed; yields host:port.
    `tls` is (certificate, key) to serve HTTPS."""
    port = free_port()
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    tls_yaml = f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n" if tls else ""
    config = workdir / "config.yml"
    config.write_text(f"""version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {workdir / 'data'}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
  secret: {os.urandom(16).hex()}
{tls_yaml}{auth_yaml}""")
    log = open(workdir / "registry.log", "wb")
    proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {(workdir / 'registry.log').read_text()[-2000:]}")
            try:
                conn = (http.client.HTTPSConnection("127.0.0.1", port, timeout=2, context=ssl._create_unverified_context())
                        if tls else http.client.HTTPConnection("127.0.0.1", port, timeout=2))
                conn.request("GET", "/v2/")
                status = conn.getresponse().status
                conn.close()
                if status in (200, 401):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("docker-registry did not come up within 30s")
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()
        log.close()

def write_registries_conf(path: Path, *registries: Registry) -> Path:
    """A registries.conf that lets the daemon pull from the test registries (plain HTTP or
    self-signed TLS, both `insecure`)."""
    entries = "".join(f'[[registry]]\nlocation = "{r.host}"\ninsecure = true\n\n' for r in registries)
    path.write_text("unqualified-search-registries = []\n\n" + entries)
    return path
