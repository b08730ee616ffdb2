"""pycri's dependencies for the offline VM, installed on the host.

`pip wheel` fetches pyproject.toml's dependencies and test extras into a wheelhouse, then
`pip install --target` installs them into a site directory with their bytecode compiled, all on
the host: pip itself inside the emulated guest took more than 10 minutes on 2 shared cores. The
host is Debian 12 with Python 3.11 like the guest, so the same wheels and .pyc files fit (the
bytecode format is fixed within a minor version). The guest's venv reads the site directory over
a read-only share. Cached under a key that is the hash of pyproject.toml; pycri itself is not in
it: the guest installs the checkout.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from conformance.nodevm import CACHE, REPO

class WheelError(RuntimeError):
    """pip could not build the wheelhouse; the message carries pip's output."""


def requirements(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    extras = project.get("optional-dependencies", {})
    return [*project["dependencies"], *extras.get("test", [])]


def _pip(python: str, what: str, args: list[str]) -> None:
    proc = subprocess.run([python, "-m", "pip", *args], capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        raise WheelError(f"pip {what} failed with exit status {proc.returncode}:\n{proc.stderr[-3000:]}")


def site_dir(repo: Path = REPO, cache: Path = CACHE, python: str = sys.executable, log=print) -> Path:
    """Return the site directory (importable packages, bytecode compiled) for this checkout's
    pyproject.toml, building the wheelhouse and installing it when missing."""
    pyproject = repo / "pyproject.toml"
    key = hashlib.sha256(pyproject.read_bytes()).hexdigest()[:16]
    target = cache / f"wheels-{key}"
    if (target / "COMPLETE").is_file():
        return target / "site"
    staging = cache / f"wheels-{key}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    log(f"nodevm: building the wheelhouse and site directory {target.name} with pip")
    quiet = ["--disable-pip-version-check", "-q"]
    _pip(python, "wheel", ["wheel", *quiet, "--wheel-dir", str(staging / "wheels"), *requirements(pyproject)])
    wheel_files = sorted(str(p) for p in (staging / "wheels").glob("*.whl"))
    _pip(python, "install --target", ["install", *quiet, "--no-index", "--no-deps", "--target",
                                      str(staging / "site"), *wheel_files])
    (staging / "COMPLETE").write_text("\n".join(Path(w).name for w in wheel_files) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.rename(staging, target)
    for old in cache.glob("wheels-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return target / "site"
