"""A loopback registry that misbehaves on purpose (wrong bytes, stalls, hang-ups, 500s, counting),
and `leftovers()` to check that a failed pull left nothing in a store root."""

from __future__ import annotations

import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def leftovers(root: Path) -> dict[str, list[str]]:
    """Everything a failed pull could have left: records, blobs, layers, links, downloads."""
    return {name: sorted(os.listdir(root / name)) for name in ("images", "blobs/sha256", "layers", "l", "ingest")}


EMPTY = {"images": [], "blobs/sha256": [], "layers": [], "l": [], "ingest": []}


class FakeRegistry:
    """A loopback registry serving fixed content, which can lie, stall, fail or count."""

    def __init__(self):
        self.routes: dict[str, tuple[bytes, str]] = {}
        self.hits: dict[str, int] = {}
        self.fail_first: dict[str, int] = {}     # path -> number of 500s before answering
        self.stall_after: dict[str, int] = {}    # path -> bytes sent before going silent
        self.drops: dict[str, int] = {}          # path -> times to hang up halfway through the body
        self.delay = 0.0
        self.stop_stalling = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                fake.hits[self.path] = fake.hits.get(self.path, 0) + 1
                time.sleep(fake.delay)
                if fake.fail_first.get(self.path, 0) > 0:
                    fake.fail_first[self.path] -= 1
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path not in fake.routes:
                    body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}'
                    self.send_response(404)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                body, content_type = fake.routes[self.path]
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if fake.drops.get(self.path, 0) > 0:
                    fake.drops[self.path] -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                cut = fake.stall_after.get(self.path)
                if cut is None:
                    self.wfile.write(body)
                    return
                self.wfile.write(body[:cut])
                self.wfile.flush()
                fake.stop_stalling.wait(60)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def serve(self, repository: str, tag: str, image, *, blobs_override: dict[str, bytes] | None = None) -> None:
        images = getattr(image, "images", [image])
        for img in images:
            for digest, data in {**img.blobs, **(blobs_override or {})}.items():
                self.routes[f"/v2/{repository}/blobs/{digest}"] = (data, "application/octet-stream")
            self.routes[f"/v2/{repository}/manifests/{img.digest}"] = (img.manifest, img.media_type)
        self.routes[f"/v2/{repository}/manifests/{tag}"] = (image.manifest, image.media_type)
        self.routes[f"/v2/{repository}/manifests/{image.digest}"] = (image.manifest, image.media_type)

    def close(self) -> None:
        self.stop_stalling.set()
        self.httpd.shutdown()
        self.httpd.server_close()
