"""Build the private Cython kernels in ext/ as modules of twinkles_hpc (e.g. twinkles_hpc._render).

All metadata lives in pyproject.toml; this file only declares the compiled extensions.

Compiler flags: -O3, no fast-math and no contraction of a * b + c into fused multiply-adds, so every
kernel rounds exactly as the plain C order of operations says: the products are bit-identical between a
build for the baseline x86-64 and one using the machine's widest vector instructions. The instruction set
is the build machine's (-march=native) unless TWINKLES_HPC_MARCH names another (e.g. x86-64-v3 for a
cluster whose login and compute nodes differ, or an empty value for the compiler's default); docs/cori.md.
The kernels that can share a call among threads ([run] threads, off by default) are built with OpenMP.
"""
import glob
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
MARCH = os.environ.get("TWINKLES_HPC_MARCH", "native").strip()
#: the kernels with OpenMP loops (cython.parallel.prange)
OPENMP = {"_warp"}


def kernels():
    exts = []
    for pyx in sorted(glob.glob(os.path.join(HERE, "ext", "_*.pyx"))):
        name = os.path.splitext(os.path.basename(pyx))[0]
        exts.append(Extension(
            f"twinkles_hpc.{name}",
            [os.path.relpath(pyx, HERE)],
            depends=[os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, "ext", f"{name}*.h"))
                     + glob.glob(os.path.join(HERE, "ext", "*.pxi"))],
            include_dirs=[numpy.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=(["-O3", "-fno-fast-math", "-ffp-contract=off"] + ([f"-march={MARCH}"] if MARCH else [])
                                + (["-fopenmp"] if name in OPENMP else [])),
            extra_link_args=["-fopenmp"] if name in OPENMP else [],
        ))
    return cythonize(exts, language_level=3, compiler_directives={
        "boundscheck": False, "wraparound": False, "cdivision": True,
        "initializedcheck": False, "embedsignature": True})


setup(ext_modules=kernels())
