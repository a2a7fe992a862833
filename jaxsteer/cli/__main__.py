"""`python -m jaxsteer.cli ...`: the `jaxsteer` command."""

from . import main

main()
