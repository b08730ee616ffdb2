"""The node VM: a Debian 12 guest with systemd as PID 1, pure cgroup v2 and AppArmor, booted under qemu.

This build machine is a cgroup v1 hybrid host without systemd or an LSM; the nodes kubelet runs on
are not. The VM lets tests and critest run on that production shape without touching the host:

    python -m conformance.nodevm build                 # build (or reuse) the cached disk
    python -m conformance.nodevm run -- CMD ARGS...    # boot, install pycri, run CMD inside, power off
    python -m conformance.nodevm lane                  # make test-node-vm: integration tests + critest

Modules: `image` builds the disk from Debian's archive, `wheels` installs the Python dependencies
on the host, `vm` boots qemu under a machine-wide lock, `guest` is the agent the VM runs at boot
(stdlib only), `lane` the test sequence of make test-node-vm inside the VM.
"""

import os
from pathlib import Path

DEFAULT_CACHE = Path("/var/tmp/pycri-nodevm")
# $NODEVM_CACHE puts the image, wheels and runs elsewhere (e.g. to time a build from scratch); the
# one-VM-per-machine lock stays in DEFAULT_CACHE whatever the cache.
CACHE = Path(os.environ.get("NODEVM_CACHE") or DEFAULT_CACHE)
REPO = Path(__file__).resolve().parent.parent.parent
