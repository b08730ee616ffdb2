"""The exit-directory watcher: one report per exit file, temp files ignored, nothing lost on overflow."""

import asyncio
import os

from cri.oci.exitwatch import ExitWatcher, read_exit_status


def test_reports_renamed_exit_files_once_and_ignores_temp_files(tmp_path):
    async def scenario():
        seen: list[str] = []
        watcher = ExitWatcher(tmp_path / "exits", seen.append)
        watcher.start()
        try:
            temp = tmp_path / "exits" / "abc.XYZ123"
            temp.write_text("137")  # what g_file_set_contents does: a temp file, then a rename
            os.rename(temp, tmp_path / "exits" / "abc")
            (tmp_path / "exits" / "def").write_text("0")
            for _ in range(1000):  # (10 s at most: left as soon as both are seen)
                if len(seen) >= 2:
                    break
                await asyncio.sleep(0.01)
        finally:
            watcher.stop()
        return seen

    assert asyncio.run(scenario()) == ["abc", "def"]
    assert read_exit_status(tmp_path / "exits" / "abc") == 137
    assert read_exit_status(tmp_path / "exits" / "missing") is None
