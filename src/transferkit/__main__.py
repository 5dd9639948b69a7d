"""``python -m transferkit`` is the same as the ``transferkit`` command."""

from .cli import main

main()
