"""Named crash points for the fault-injection suite (conformance/faults.py).

`crash_point("sandbox.run.after_netns")` does nothing unless the daemon was started with
PYCRI_FAULT_POINT naming that point; then the daemon kills itself with SIGKILL right there, the
way an OOM kill or a power cut would, so the suite can check what the next start finds.
"""

import os
import signal

_ARMED = os.environ.get("PYCRI_FAULT_POINT") or None


def crash_point(name: str) -> None:
    if _ARMED is not None and _ARMED == name:
        os.kill(os.getpid(), signal.SIGKILL)
