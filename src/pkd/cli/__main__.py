"""`python -m pkd.cli` (torchrun, accelerate launch): the `pkd` command."""

from pkd.cli import main

main()
