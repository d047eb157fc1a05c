"""Threads per process of the kernels that share one call among OpenMP threads (`run --threads`): the
Lanczos warps and the coadd combinations (level2/warp.py). `twinkles-hpc run --threads N` sets it on every
rank; 1, the default, runs them single-threaded. Each output row is computed by one thread in the same way
whatever the count, so the products are the same bits (tests/test_threads.py)."""

#: The most threads a process may ask for.
MAX_THREADS = 256
_count = 1


def set_kernel_threads(n):
    """Threads of this process's threaded kernels from now on (1: none)."""
    global _count
    n = int(n)
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"threads must be in 1..{MAX_THREADS}, got {n}")
    _count = n


def kernel_threads():
    """The threads set by set_kernel_threads (1 unless set)."""
    return _count
