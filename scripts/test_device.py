#!/usr/bin/env python
"""Kept for the seed's habit: same as ``alseg device check`` (all its options pass through).

Example: python scripts/test_device.py --device cuda --json
"""

import sys

from alseg.commands import app

if __name__ == "__main__":
    app(["device", "check", *sys.argv[1:]], prog_name="alseg device check")
