"""Builds the compiled hot path, relay._fastpath, from relay/_fastpath.pyx; pyproject.toml has the rest."""

import glob

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension("relay._fastpath", ["relay/_fastpath.pyx"],
                   depends=["relay/_fastpath.pxd", *sorted(glob.glob("relay/*.pxi"))],  # its parts
                   extra_compile_args=["-O3"])],
        compiler_directives={"language_level": 3, "embedsignature": True},
    ),
)
