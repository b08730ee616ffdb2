"""Screenshots of an SVG by Debian's headless chromium: for the timeline's browser test and bench/timeline.py --png
(how docs/timeline.png was made)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

FLAGS = ("--no-sandbox", "--headless", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def screenshot(svg: Path, png: Path) -> None:
    """Render `svg` at its own size and write it to `png`. The window is 200 px taller than the SVG (the window's
    own chrome takes part of its height); the picture is cropped back to the SVG's size."""
    chromium = shutil.which("chromium")
    if chromium is None:
        raise FileNotFoundError("chromium is not installed: `make test` installs it (Debian's chromium package)")
    text = svg.read_text()
    width, height = (int(float(text.split(f'{dimension}="', 1)[1].split('"', 1)[0])) for dimension in ("width", "height"))
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}",
                        f"--window-size={width},{height + 200}", svg.resolve().as_uri()],
                       capture_output=True, check=True, timeout=120)
    Image.open(png).crop((0, 0, width, height)).save(png)
