"""Registry: the local SQLite model registry (versions, aliases, labels, lineage) and lineage formatting."""
