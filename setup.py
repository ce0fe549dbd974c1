"""Builds the compiled hot path, relay._fastpath, from relay/_fastpath.pyx; pyproject.toml has the rest."""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension("relay._fastpath", ["relay/_fastpath.pyx"], depends=["relay/_fastpath.pxd", "relay/_codec.pxi", "relay/_playout.pxi", "relay/_wscore.pxi", "relay/_media.pxi"],
                   extra_compile_args=["-O3"])],
        compiler_directives={"language_level": 3, "embedsignature": True},
    ),
)
