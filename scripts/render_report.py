#!/usr/bin/env python3
"""Render an HTML file (e.g. the output of ``alseg report``) to a PNG screenshot with headless Chromium.

Usage: python scripts/render_report.py report.html report.png [--width 1400] [--height 4000]

Needs Debian's ``chromium`` package (``apt-get install -y chromium``). A fresh temporary profile is used
and every network-facing feature is off, so the screenshot shows only what the file itself contains.
Exit status: 0 on success, 2 when chromium is missing, 1 when it fails or writes no screenshot.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class RenderError(RuntimeError):
    pass


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def render(html_path: str | Path, png_path: str | Path, *, width: int = 1400, height: int = 4000,
           timeout: float = 120.0) -> Path:
    """Screenshot ``html_path`` (``width`` x ``height`` CSS pixels) into ``png_path``; returns the PNG path."""
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("chromium not found on PATH; install it with: apt-get install -y chromium")
    html_path = Path(html_path).resolve()
    if not html_path.is_file():
        raise RenderError(f"{html_path}: not found")
    png_path = Path(png_path).resolve()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="alseg-chromium-") as profile:
        cmd = [
            exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={width},{height}",
            f"--screenshot={png_path}", html_path.as_uri(),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RenderError(f"chromium did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0 or not png_path.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RenderError(f"chromium exited {proc.returncode} without writing {png_path}: " + " | ".join(tail))
    return png_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="HTML file to render")
    parser.add_argument("png", type=Path, help="screenshot to write (PNG)")
    parser.add_argument("--width", type=int, default=1400, help="viewport width in CSS pixels (default 1400)")
    parser.add_argument("--height", type=int, default=4000, help="viewport height in CSS pixels (default 4000)")
    args = parser.parse_args(argv)
    try:
        path = render(args.html, args.png, width=args.width, height=args.height)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RenderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
