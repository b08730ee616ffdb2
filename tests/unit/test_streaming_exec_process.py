"""The OCI process an exec runs is the container's own, with the command and terminal of the request."""

from cri.core.streams.process import exec_process

CONTAINER = {
    "terminal": False, "user": {"uid": 1000, "gid": 1000, "additionalGids": [50000]}, "args": ["sleep", "600"],
    "env": ["PATH=/bin", "FROM_IMAGE=yes"], "cwd": "/work", "capabilities": {"bounding": ["CAP_KILL"]},
    "noNewPrivileges": True, "oomScoreAdj": 5, "consoleSize": {"height": 1, "width": 1},
}


def test_exec_keeps_the_container_identity_and_takes_the_command():
    process = exec_process(CONTAINER, ["id", "-u"], tty=False)
    assert process["args"] == ["id", "-u"] and process["terminal"] is False
    for key in ("user", "cwd", "capabilities", "noNewPrivileges"):
        assert process[key] == CONTAINER[key]
    assert process["env"] == CONTAINER["env"]
    assert "oomScoreAdj" not in process and "consoleSize" not in process
    assert CONTAINER["args"] == ["sleep", "600"]  # the container's spec is not modified


def test_a_terminal_gets_term_unless_the_container_sets_it():
    assert exec_process(CONTAINER, ["sh"], tty=True)["env"] == ["PATH=/bin", "FROM_IMAGE=yes", "TERM=xterm"]
    own = {**CONTAINER, "env": ["TERM=vt100"]}
    assert exec_process(own, ["sh"], tty=True)["env"] == ["TERM=vt100"]
