"""Resolve the container's user and groups from the image's /etc/passwd and /etc/group (pure functions)."""

from __future__ import annotations

from dataclasses import dataclass


class UserResolutionError(Exception):
    """The asked user or group cannot be resolved against the image."""


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


@dataclass(frozen=True)
class ResolvedUser:
    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    home: str = "/"
    username: str = ""


@dataclass(frozen=True)
class UserRequest:
    """What the caller asked for: CRI security context fields plus the image's USER."""

    run_as_user: int | None = None
    run_as_username: str = ""
    run_as_group: int | None = None
    supplemental_groups: tuple[int, ...] = ()
    strict_supplemental_groups: bool = False
    image_user: str = ""


def parse_passwd(text: str | None) -> list[PasswdEntry]:
    entries = []
    for line in (text or "").splitlines():
        parts = line.split(":")
        if len(parts) < 7 or line.startswith("#"):
            continue
        try:
            entries.append(PasswdEntry(parts[0], int(parts[2]), int(parts[3]), parts[5] or "/"))
        except ValueError:
            continue
    return entries


def parse_group(text: str | None) -> list[GroupEntry]:
    entries = []
    for line in (text or "").splitlines():
        parts = line.split(":")
        if len(parts) < 4 or line.startswith("#"):
            continue
        try:
            members = tuple(m for m in parts[3].split(",") if m)
            entries.append(GroupEntry(parts[0], int(parts[2]), members))
        except ValueError:
            continue
    return entries


def _numeric(value: str) -> int | None:
    if value.isdigit():
        number = int(value)
        if number < 2**32 - 1:
            return number
        raise UserResolutionError(f"id {value} is out of range")
    return None


def resolve_user(request: UserRequest, passwd_text: str | None, group_text: str | None) -> ResolvedUser:
    """Apply Kubernetes' precedence: run_as_user / run_as_username over the image USER, run_as_group over its group.

    The primary gid defaults to the passwd entry's gid; supplemental groups are the primary gid (the kernel's
    group list is set from them alone, and containerd and CRI-O list it too), the image groups naming the user
    (unless strict) and the requested ones, without duplicates.
    """
    passwd = parse_passwd(passwd_text)
    groups = parse_group(group_text)
    image_user, _, image_group = request.image_user.partition(":")

    entry: PasswdEntry | None = None
    if request.run_as_user is not None:
        uid = request.run_as_user
        entry = next((e for e in passwd if e.uid == uid), None)
    elif request.run_as_username:
        entry = next((e for e in passwd if e.name == request.run_as_username), None)
        if entry is None:
            numeric = _numeric(request.run_as_username)
            if numeric is None:
                raise UserResolutionError(f"user {request.run_as_username!r} not found in the image's /etc/passwd")
            uid = numeric
        else:
            uid = entry.uid
    elif image_user:
        numeric = _numeric(image_user)
        if numeric is not None:
            uid = numeric
            entry = next((e for e in passwd if e.uid == uid), None)
        else:
            entry = next((e for e in passwd if e.name == image_user), None)
            if entry is None:
                raise UserResolutionError(f"image user {image_user!r} not found in the image's /etc/passwd")
            uid = entry.uid
    else:
        uid = 0
        entry = next((e for e in passwd if e.uid == 0), None)

    if request.run_as_group is not None:
        gid = request.run_as_group
    elif image_group and request.run_as_user is None and not request.run_as_username:
        numeric = _numeric(image_group)
        if numeric is not None:
            gid = numeric
        else:
            group = next((g for g in groups if g.name == image_group), None)
            if group is None:
                raise UserResolutionError(f"image group {image_group!r} not found in the image's /etc/group")
            gid = group.gid
    else:
        gid = entry.gid if entry else 0

    additional: list[int] = [gid]
    if entry is not None and not request.strict_supplemental_groups:
        additional.extend(g.gid for g in groups if entry.name in g.members)
    additional.extend(request.supplemental_groups)
    unique = tuple(dict.fromkeys(additional))
    return ResolvedUser(
        uid=uid, gid=gid, additional_gids=unique, home=entry.home if entry else "/",
        username=entry.name if entry else "")
