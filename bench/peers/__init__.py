"""The systems bucketly is measured against, and the ceilings of what Python can do here."""
