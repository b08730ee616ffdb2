"""Object ids: 64 lower-case hex characters, as kubelet and crictl expect from CRI-O and containerd."""

import re
import secrets

_ID = re.compile(r"[0-9a-f]{64}")


def new_id() -> str:
    return secrets.token_hex(32)


def valid_id(value: str) -> bool:
    return bool(_ID.fullmatch(value))
