"""The idmapped root filesystem of a user-namespaced pod's containers, as a `hostUsers: false` pod sees it: the
image's files keep their owners as the pod sees ids (root's are root's, writable by it), what it writes lands on
the host as the pod's host ids, the image's layers stay untouched, and nothing stays mounted after removal or
after a daemon crash."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cri.api.v1 import api_pb2

from tests.integration.helpers_containers import container_config, exec_sync, run, status, wait_state
from tests.integration.test_image_volumes import image_mount, pull_data_image
from tests.integration.helpers_sandboxes import mounts_below
from tests.integration.test_userns import HOST_BASE, MAPPING, run_pod, userns_pod_config


def test_a_user_namespaced_pod_owns_its_image_files_on_crun(net_env, registry, tmp_path, request):  # noqa: F811
    request.getfixturevalue("crun_host")
    d, _, _ = net_env
    cfg = userns_pod_config(tmp_path / "logs")
    pod = run_pod(d, cfg, "crun")
    # an image volume, with the pod's mappings as kubelet puts them on every mount of a hostUsers: false pod
    volume = image_mount("/models", pull_data_image(d, registry))
    volume.uidMappings.extend(MAPPING)
    volume.gidMappings.extend(MAPPING)
    cid = run(d, pod, cfg, container_config("owner", ["sleep", "600"], mounts=[volume]))
    assert wait_state(d, cid, api_pb2.CONTAINER_RUNNING).state == api_pb2.CONTAINER_RUNNING

    def inside(script: str) -> str:
        result = exec_sync(d, cid, ["sh", "-c", script])
        assert result.exit_code == 0, result.stderr
        return result.stdout.decode()

    assert inside("stat -c %u:%g / /etc/passwd /home/u1 /models/models/m.bin").split() == ["0:0"] * 2 + [
        "1000:1000", "0:0"]
    assert inside("cat /models/models/m.bin") == "weights"
    assert inside("echo 'u2:x:1001:1001::/:/bin/sh' >> /etc/passwd && tail -1 /etc/passwd").strip().startswith("u2:")
    assert inside("mkdir /made && chown 1000:1000 /made && stat -c %u /made").strip() == "1000"
    # on the host, what it wrote belongs to the pod's host ids; the image's own layers are host root's, unchanged
    rootfs = Path(json.loads(status(d, cid, verbose=True).info["info"])["rootfs"])
    upper = rootfs.parent / "upper"
    assert (upper / "etc/passwd").stat().st_uid == HOST_BASE
    assert (upper / "made").stat().st_uid == HOST_BASE + 1000
    layer_passwd = [p for p in (d.root / "storage/layers").glob("*/diff/etc/passwd")]
    assert layer_passwd
    assert all(p.stat().st_uid == 0 and b"u2:" not in p.read_bytes() for p in layer_passwd)

    # a crash keeps the container and its rootfs; the restarted daemon still removes everything
    d.kill()
    d.start()
    assert inside("stat -c %u /bin/busybox").strip() == "0"
    d.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
    d.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid), timeout=30)
    d.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    d.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    # the container's root is reclaimed in the background; the pod's removal waits for it
    assert [m for m in mounts_below(d.base) if cid in m] == []
    assert not os.path.exists(upper)
