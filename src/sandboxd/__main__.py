"""``python -m sandboxd`` runs the ``sandboxd`` command."""

from sandboxd.launcher import main

main()
