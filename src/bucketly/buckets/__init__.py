"""Bucket runtime: serialized access to handlers, and scheduled jobs."""

from .runtime import Bucket, JobRunner

__all__ = ["Bucket", "JobRunner"]
