"""``python -m alseg.commands ...`` runs the ``alseg`` command line (as torchrun and job scripts need)."""

from alseg.commands import main

main()
