"""``python -m bucketly.cli``: the ``bucketly`` command-line client."""

from .app import main

main()
