"""Build the optional C extension; everything else is in pyproject.toml.

``bucketly._speedups`` holds the native core of ``bucketly.UniqueIndex``. It is optional: where
it cannot be compiled (no C compiler or Python headers), the install still succeeds, with a
warning, and bucketly uses the pure-Python implementation of the same class
(``bucketly.speedups_available()`` tells which one is in use).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "bucketly._speedups",
            sources=["src/bucketly/_speedups.c"],
            optional=True,
        )
    ]
)
