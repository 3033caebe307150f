"""`python -m shared` is the `intel-classifier` command."""

from shared.cli import main

main()
