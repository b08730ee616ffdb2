"""What an image manifest and its config say, checked: descriptors, the layer list, the config's diff ids, and the
image record made from them. Pulls (image_pull.py) and archive imports (archive.py) share it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from storage import reference as refs
from storage.errors import InvalidReference, UnsupportedManifest
from storage.image_records import ImageRecord
from storage.layers import MAX_LAYERS
from storage.registry import Manifest

MAX_CONFIG_BYTES = 8 << 20


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
                 blobs: set[str]) -> ImageRecord:
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
        chain_ids=chain_ids, created=str(config.get("created") or ""), blobs=sorted(blobs))


def _strings(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, str):
        return [value]
    return []
