"""Build OCI images from scratch for tests and benchmarks, and push them to a registry.

Nothing here needs a network or a container tool: layers are tar streams made with tarfile,
busybox comes from Debian's busybox-static, and pushing speaks the Distribution API directly
(monolithic blob uploads, then the manifest). Other rooms use `build_busybox_image` and
`push_to_registry` to get a runnable image into their tests.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import http.client
import io
import json
import ssl
import tarfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = {"gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
               "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
               "none": "application/vnd.oci.image.layer.v1.tar"}
BUSYBOX = Path("/usr/bin/busybox")
BUSYBOX_APPLETS = ("sh", "ls", "cat", "echo", "sleep", "true", "false", "id", "env", "ps", "mkdir", "rm",
                   "touch", "test", "wc", "head", "tail", "grep", "hostname", "nc", "wget", "top", "kill", "stat")
_FIXED_MTIME = 1_700_000_000


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Entry:
    """One tar entry. kind: file, dir, symlink, hardlink, char, block, fifo."""
    name: str
    kind: str = "file"
    data: bytes = b""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, str] = field(default_factory=dict)
    size_override: int | None = None  # a header that lies about its size (hostile tests)


_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}


def tar_layer(entries: list[Entry]) -> bytes:
    """An uncompressed tar of `entries`, exactly in the order given (names are not cleaned,
    so tests can write hostile ones)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = _TYPES[e.kind]
            info.mode = e.mode if e.mode is not None else (0o755 if e.kind == "dir" else 0o644)
            info.uid, info.gid = e.uid, e.gid
            info.mtime = _FIXED_MTIME
            info.linkname = e.linkname
            info.devmajor, info.devminor = e.devmajor, e.devminor
            if e.xattrs:
                info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in e.xattrs.items()}
            if e.kind == "file":
                info.size = e.size_override if e.size_override is not None else len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


@functools.lru_cache(maxsize=16)
def compress(data: bytes, compression: str = "gzip") -> bytes:
    """The compressed layer; the same for the same input (no timestamp), so a test that builds the busybox image
    again gets the bytes made before (gzip of busybox took ~1 s a test in the emulated node VM)."""
    if compression == "gzip":
        return gzip.compress(data, compresslevel=1, mtime=0)
    if compression == "zstd":
        import zstandard
        return zstandard.ZstdCompressor(level=3).compress(data)
    return data


def busybox_entries(applets: tuple[str, ...] = BUSYBOX_APPLETS) -> list[Entry]:
    """A minimal root: /bin/busybox with applet symlinks, /etc/passwd and /etc/group, /tmp."""
    entries = [Entry("bin", "dir"), Entry("bin/busybox", data=BUSYBOX.read_bytes(), mode=0o755)]
    entries += [Entry(f"bin/{name}", "symlink", linkname="busybox") for name in applets]
    entries += [Entry("etc", "dir"),
                Entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n"),
                Entry("etc/group", data=b"root:x:0:\nnogroup:x:65534:\n"),
                Entry("tmp", "dir", mode=0o1777), Entry("root", "dir", mode=0o700)]
    return entries


@dataclass
class Image:
    manifest: bytes
    config: bytes
    blobs: dict[str, bytes]          # every blob the manifest names (config and layers)
    media_type: str = OCI_MANIFEST

    @property
    def digest(self) -> str:
        return digest_of(self.manifest)

    @property
    def config_digest(self) -> str:
        return digest_of(self.config)

    @property
    def id(self) -> str:
        return self.config_digest


@dataclass
class Index:
    manifest: bytes
    images: list[Image]
    media_type: str = OCI_INDEX

    @property
    def digest(self) -> str:
        return digest_of(self.manifest)


def build_image(layers: list[bytes], *, compression: str = "gzip", config: dict | None = None,
                architecture: str = "amd64", variant: str = "", diff_ids: list[str] | None = None) -> Image:
    """An image from uncompressed layer tars. `config` goes into the config's "config" section;
    `diff_ids` may be given to lie on purpose."""
    blobs: dict[str, bytes] = {}
    descriptors = []
    for tar in layers:
        packed = compress(tar, compression)
        blobs[digest_of(packed)] = packed
        descriptors.append({"mediaType": LAYER_TYPES[compression], "digest": digest_of(packed), "size": len(packed)})
    config_doc = {"architecture": architecture, "os": "linux", "created": "2024-01-01T00:00:00Z",
                  "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], **(config or {})},
                  "rootfs": {"type": "layers", "diff_ids": diff_ids or [digest_of(t) for t in layers]}}
    if variant:
        config_doc["variant"] = variant
    config_bytes = json.dumps(config_doc, sort_keys=True).encode()
    blobs[digest_of(config_bytes)] = config_bytes
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config_bytes), "size": len(config_bytes)},
                           "layers": descriptors}, sort_keys=True).encode()
    return Image(manifest, config_bytes, blobs)


def build_busybox_image(*, extra_layers: list[list[Entry]] = (), compression: str = "gzip",
                        config: dict | None = None, architecture: str = "amd64", variant: str = "") -> Image:
    """busybox as the first layer, then `extra_layers` (each a list of entries) on top."""
    layers = [tar_layer(busybox_entries())] + [tar_layer(entries) for entries in extra_layers]
    return build_image(layers, compression=compression, config=config, architecture=architecture, variant=variant)


def build_index(images: list[tuple[Image, dict]]) -> Index:
    """An OCI index of (image, platform dict) pairs."""
    manifests = [{"mediaType": image.media_type, "digest": image.digest, "size": len(image.manifest), "platform": platform}
                 for image, platform in images]
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}, sort_keys=True).encode()
    return Index(body, [image for image, _ in images])


def write_oci_layout(target: Path, items: list[tuple[Image | Index, str]]) -> Path:
    """An OCI image layout directory holding each (image or index, ref name) pair."""
    blobs = target / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (target / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')

    def put(data: bytes) -> None:
        (blobs / digest_of(data)[7:]).write_bytes(data)

    descriptors = []
    for item, name in items:
        images = item.images if isinstance(item, Index) else [item]
        for image in images:
            for data in image.blobs.values():
                put(data)
            put(image.manifest)
        put(item.manifest)
        descriptors.append({"mediaType": item.media_type, "digest": item.digest, "size": len(item.manifest),
                            "annotations": {"org.opencontainers.image.ref.name": name}})
    (target / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": descriptors}))
    return target


def write_docker_archive(target: Path, image: Image, repo_tags: list[str]) -> Path:
    """A `docker save` tarball (manifest.json + config + layer tars) of one image."""
    manifest_doc = json.loads(image.manifest)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        config_name = f"{image.config_digest[7:]}.json"
        add(config_name, image.config)
        layer_names = []
        for desc in manifest_doc["layers"]:
            name = f"{desc['digest'][7:]}/layer.tar"
            add(name, image.blobs[desc["digest"]])
            layer_names.append(name)
        add("manifest.json", json.dumps([{"Config": config_name, "RepoTags": repo_tags, "Layers": layer_names}]).encode())
    target.write_bytes(buf.getvalue())
    return target


def _request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None,
             headers: dict | None = None) -> http.client.HTTPResponse:
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    resp.read()
    return resp


def push_to_registry(registry: str, repository: str, tag: str, item: Image | Index, *,
                     auth: tuple[str, str] | None = None, bearer: str | None = None, tls: bool = False) -> str:
    """Push an image or index (with every child) to http://registry/repository:tag (https without
    certificate checks with `tls`); returns the pushed manifest's digest."""
    headers: dict[str, str] = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    conn = (http.client.HTTPSConnection(registry, timeout=60, context=ssl._create_unverified_context()) if tls
            else http.client.HTTPConnection(registry, timeout=60))
    try:
        images = item.images if isinstance(item, Index) else [item]
        for image in images:
            for digest, data in image.blobs.items():
                if _request(conn, "HEAD", f"/v2/{repository}/blobs/{digest}", headers=headers).status == 200:
                    continue
                resp = _request(conn, "POST", f"/v2/{repository}/blobs/uploads/", headers=headers)
                if resp.status != 202:
                    raise RuntimeError(f"push {repository}: blob upload start answered {resp.status}")
                location = urllib.parse.urlsplit(resp.headers["Location"])
                query = (location.query + "&" if location.query else "") + urllib.parse.urlencode({"digest": digest})
                resp = _request(conn, "PUT", f"{location.path}?{query}", data,
                                {**headers, "Content-Type": "application/octet-stream"})
                if resp.status != 201:
                    raise RuntimeError(f"push {repository}: blob {digest} answered {resp.status}")
            if isinstance(item, Index):
                _put_manifest(conn, repository, image.digest, image.manifest, image.media_type, headers)
        _put_manifest(conn, repository, tag, item.manifest, item.media_type, headers)
    finally:
        conn.close()
    return item.digest


def _put_manifest(conn, repository: str, reference: str, body: bytes, media_type: str, headers: dict) -> None:
    resp = _request(conn, "PUT", f"/v2/{repository}/manifests/{reference}", body, {**headers, "Content-Type": media_type})
    if resp.status != 201:
        raise RuntimeError(f"push {repository}:{reference}: manifest answered {resp.status}")
