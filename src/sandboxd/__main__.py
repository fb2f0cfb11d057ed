"""``python -m sandboxd`` runs the ``sandboxd`` command."""

from sandboxd.cli import main

main()
