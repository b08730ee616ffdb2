"""The infra's start (cri/core/sandboxes/host.py): what its parents write goes to the pod's infra.log, and a start
that fails says why from it."""

import asyncio
import os

import pytest

from cri.core.sandboxes.host import INFRA_LOG, start_infra
from cri.errors import Internal


def test_a_failed_infra_start_says_why_and_the_daemon_stderr_stays_clean(tmp_path, capfd):
    async def place(pid: int) -> None:
        pass

    missing = str(tmp_path / "no-catatonit")
    with pytest.raises(Internal) as e:
        asyncio.run(start_infra(missing, {}, "", str(tmp_path), place))
    assert "exited at start" in str(e.value)
    assert missing in str(e.value).split("exited at start", 1)[1]  # unshare's own "failed to execute ..." message
    assert missing in (tmp_path / INFRA_LOG).read_text()
    out, err = capfd.readouterr()
    assert missing not in out + err
    assert oct(os.stat(tmp_path / INFRA_LOG).st_mode & 0o777) == "0o600"
