"""Build script: only here to declare the optional C accelerator.

Everything else lives in setup.cfg. The extension is ``optional``: without a compiler the
build goes on and geventws uses its pure-Python unmasking.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("geventws._speedups", sources=["geventws/_speedups.c"], optional=True),
    ],
)
