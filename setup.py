"""Build the private Cython kernels in ext/ as modules of twinkles_hpc (e.g. twinkles_hpc._render).

All metadata lives in pyproject.toml; this file only declares the compiled extensions.
"""
import glob
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def kernels():
    exts = []
    for pyx in sorted(glob.glob(os.path.join(HERE, "ext", "_*.pyx"))):
        name = os.path.splitext(os.path.basename(pyx))[0]
        exts.append(Extension(
            f"twinkles_hpc.{name}",
            [os.path.relpath(pyx, HERE)],
            include_dirs=[numpy.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            # -O3 without -ffast-math: results must be bit-identical run to run.
            extra_compile_args=["-O3", "-fno-fast-math"],
        ))
    return cythonize(exts, language_level=3, compiler_directives={
        "boundscheck": False, "wraparound": False, "cdivision": True,
        "initializedcheck": False, "embedsignature": True})


setup(ext_modules=kernels())
