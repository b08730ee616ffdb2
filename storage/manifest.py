"""What an image manifest and its config say, checked: media types, the platform chosen from an index,
descriptors, the layer list, the config's diff ids, and the image record made from them. Pulls (image_pull.py,
registry.py) and archive imports (archive.py) share it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from storage import reference as refs
from storage.errors import InvalidReference, UnsupportedManifest
from storage.image_records import ImageRecord
from storage.layers import MAX_LAYERS

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
SCHEMA1_TYPES = ("application/vnd.docker.distribution.manifest.v1+json",
                 "application/vnd.docker.distribution.manifest.v1+prettyjws")
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
IMAGE_MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
MAX_MANIFEST_BYTES = 4 << 20
MAX_CONFIG_BYTES = 8 << 20


@dataclass(frozen=True)
class Manifest:
    body: bytes
    media_type: str
    digest: str

    def json(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.body)
        except ValueError as exc:
            raise UnsupportedManifest(f"manifest {self.digest} is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise UnsupportedManifest(f"manifest {self.digest} is not a JSON object")
        return doc


def classify(body: bytes, header_type: str, digest: str, where: str) -> Manifest:
    """The manifest a registry sent, its media type taken from the document where the header is vague;
    schema1 and unknown types are refused."""
    manifest = Manifest(body, header_type, digest)
    doc = manifest.json()
    media_type = doc.get("mediaType") or header_type
    if media_type in SCHEMA1_TYPES or doc.get("schemaVersion") == 1:
        raise UnsupportedManifest(f"{where}: Docker schema1 manifests are not supported "
                                  "(deprecated format); push the image again with a current client")
    if media_type not in INDEX_TYPES + IMAGE_MANIFEST_TYPES:
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST if "layers" in doc else media_type
    if media_type not in INDEX_TYPES + IMAGE_MANIFEST_TYPES:
        raise UnsupportedManifest(f"{where}: unsupported manifest type {media_type!r}")
    return Manifest(body, media_type, digest)


@dataclass(frozen=True)
class Descriptor:
    digest: str
    size: int
    media_type: str


def descriptor(raw: object, where: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise UnsupportedManifest(f"{where}: descriptor is not an object")
    digest, size = raw.get("digest"), raw.get("size")
    if not isinstance(digest, str) or not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise UnsupportedManifest(f"{where}: descriptor needs a digest and a non-negative size: {raw!r}"[:300])
    refs.validate_digest(digest)
    if not digest.startswith("sha256:"):
        raise UnsupportedManifest(f"{where}: digest algorithm of {digest} is not supported")
    return Descriptor(digest, size, str(raw.get("mediaType") or ""))


def parse_image_manifest(manifest: Manifest, where: str) -> tuple[Descriptor, list[Descriptor]]:
    doc = manifest.json()
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise UnsupportedManifest(f"{where}: manifest {manifest.digest} has no layers list")
    if len(layers) > MAX_LAYERS:
        raise UnsupportedManifest(f"{where}: {len(layers)} layers; overlayfs stacks at most {MAX_LAYERS}")
    return descriptor(doc.get("config"), where), [descriptor(layer, where) for layer in layers]


def parse_config(data: bytes, where: str) -> dict[str, Any]:
    try:
        config: dict[str, Any] = json.loads(data)
        diff_ids = config["rootfs"]["diff_ids"]
        if not isinstance(diff_ids, list):
            raise TypeError("diff_ids is not a list")
        for diff_id in diff_ids:
            refs.validate_digest(diff_id)
    except (ValueError, KeyError, TypeError, InvalidReference) as exc:
        raise UnsupportedManifest(f"{where}: invalid image config: {exc}") from None
    if config.get("os", "linux") != "linux":
        raise UnsupportedManifest(f"{where}: image is for os {config.get('os')!r}, not linux")
    return config


def image_record(config_digest: str, config: dict[str, Any], chain_ids: list[str], size: int,
                 blobs: set[str], manifest: dict[str, Any] | None = None) -> ImageRecord:
    """The (uncommitted, nameless) record of an image whose config parse_config accepted."""
    conf = config.get("config") or {}
    return ImageRecord(
        id=config_digest, size=size, user=str(conf.get("User") or ""),
        env=_strings(conf.get("Env")), entrypoint=_strings(conf.get("Entrypoint")),
        cmd=_strings(conf.get("Cmd")), working_dir=str(conf.get("WorkingDir") or ""),
        volumes=sorted((conf.get("Volumes") or {}).keys()) if isinstance(conf.get("Volumes"), dict) else [],
        stop_signal=str(conf.get("StopSignal") or ""),
        labels=({str(k): str(v) for k, v in (conf.get("Labels") or {}).items()}
                if isinstance(conf.get("Labels"), dict) else {}),
        chain_ids=chain_ids, created=str(config.get("created") or ""), blobs=sorted(blobs),
        annotations=({str(k): str(v) for k, v in (manifest or {}).get("annotations", {}).items()}
                     if isinstance((manifest or {}).get("annotations"), dict) else {}))


def _strings(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, str):
        return [value]
    return []


_ARCH = {"x86_64": ("amd64", ""), "aarch64": ("arm64", "v8"), "arm64": ("arm64", "v8"), "armv7l": ("arm", "v7"),
         "armv6l": ("arm", "v6"), "i686": ("386", ""), "i386": ("386", ""), "ppc64le": ("ppc64le", ""),
         "s390x": ("s390x", ""), "riscv64": ("riscv64", "")}


def host_platform() -> tuple[str, str]:
    """(architecture, variant) of this machine in OCI terms."""
    import platform
    machine = platform.machine()
    return _ARCH.get(machine, (machine, ""))


def choose_platform(index: dict[str, Any], where: str, platform: tuple[str, str] | None = None) -> dict[str, Any]:
    """The descriptor for linux/<arch>(/<variant>) in an index; an exact variant beats none."""
    arch, variant = platform or host_platform()
    candidates = []
    seen = []
    for desc in index.get("manifests") or []:
        if not isinstance(desc, dict):
            continue
        plat = desc.get("platform") or {}
        seen.append("/".join(filter(None, (plat.get("os"), plat.get("architecture"), plat.get("variant")))) or "?")
        if plat.get("os") != "linux" or plat.get("architecture") != arch:
            continue
        if desc.get("mediaType") not in IMAGE_MANIFEST_TYPES + (None,):
            continue
        want = plat.get("variant", "")
        if want == variant:
            candidates.append((0, desc))
        elif not want or not variant:
            candidates.append((1, desc))
    if not candidates:
        raise UnsupportedManifest(f"{where}: no image for linux/{arch}{'/' + variant if variant else ''} "
                                  f"in the index (it has: {', '.join(seen) or 'nothing'})")
    return min(candidates, key=lambda item: item[0])[1]
