# Shared by the kernels that include it (ext/_background.pyx, ext/_warp.pyx): Hoare's selection.

ctypedef fused real:
    float
    double


cdef inline void _swap(real* a, Py_ssize_t i, Py_ssize_t j) noexcept nogil:
    cdef real t = a[i]
    a[i] = a[j]
    a[j] = t


cdef real _select(real* a, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """k-th smallest of a[0..n) (0-based), median-of-three pivot; reorders a so that a[0..k-1] <= a[k]."""
    cdef Py_ssize_t lo = 0, hi = n - 1, i, j, mid
    cdef real pivot
    while hi > lo:
        mid = lo + (hi - lo) // 2
        if a[mid] < a[lo]:
            _swap(a, mid, lo)
        if a[hi] < a[lo]:
            _swap(a, hi, lo)
        if a[hi] < a[mid]:
            _swap(a, hi, mid)
        pivot = a[mid]
        i = lo
        j = hi
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                _swap(a, i, j)
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    return a[k]
