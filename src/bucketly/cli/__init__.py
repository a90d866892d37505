"""Command-line entry points: ``bucketlyd`` (the daemon) and ``bucketly`` (the client)."""
