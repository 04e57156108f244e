"""``alseg configs``: list the mmseg configs shipped with alseg."""

from __future__ import annotations

from alseg.commands._console import out, print_json
from alseg.commands._errors import cli_errors
from alseg.commands._options import Json


@cli_errors
def main(json: Json = False) -> None:
    """List the configs shipped with alseg; pass a NAME wherever a command takes a CONFIG.

    Reads: nothing. Writes: one line per config on stdout: name, then what it is.

    Example: alseg configs; alseg train cityscapes/deeplabv3_r18_d8 --labeled labeled.txt --out r1
    """
    from alseg.mm import shipped_configs

    rows = shipped_configs()
    if json:
        print_json([{"name": n, "path": str(p), "about": a} for n, p, a in rows])
        return
    width = max(len(n) for n, _, _ in rows)
    for name, _, about in rows:
        out.print(f"{name:<{width}}  {about}", markup=False)
