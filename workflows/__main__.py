"""``python -m workflows`` runs the ``fleximo`` command."""

from workflows.cli import main

main()
