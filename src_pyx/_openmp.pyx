# cython: language_level=3
"""What the OpenMP runtime says: whether the build has it, and how many threads it would use."""

cdef extern from "fc_openmp.h":
    int FASTCONV_OPENMP
    int omp_get_max_threads() noexcept nogil
    void omp_set_num_threads(int n) noexcept nogil


def openmp_enabled():
    """True when the kernels were compiled with OpenMP (otherwise prange runs serially)."""
    return bool(FASTCONV_OPENMP)


def omp_max_threads():
    """omp_get_max_threads(): the OpenMP default team size (1 without OpenMP)."""
    return omp_get_max_threads()


def omp_set_max_threads(int n):
    """omp_set_num_threads(n) for OpenMP regions that do not name num_threads."""
    omp_set_num_threads(n)


from _isa cimport fc_isa_cpu, fc_isa_level, fc_isa_name


def simd_isa():
    """(level the kernels use, best level of this CPU): "baseline", "avx2" or "avx512".

    Both come from include/fc_isa.h, the one place that picks the SIMD copies of the inner
    loops; FASTCONV_ISA=baseline|avx2 lowers the first.
    """
    return (fc_isa_name(fc_isa_level()).decode(), fc_isa_name(fc_isa_cpu()).decode())
