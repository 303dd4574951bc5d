"""`python -m vggfcn`, the same as the `vggfcn` command."""

from .cli import main

main(prog_name="vggfcn")
