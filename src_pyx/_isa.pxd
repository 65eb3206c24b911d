# cython: language_level=3
"""The instruction set of the SIMD inner loops: decided once, in include/fc_isa.h."""

cdef extern from "fc_isa.h":
    int FC_ISA_BASELINE
    int FC_ISA_AVX2
    int FC_ISA_AVX512
    int FC_HAVE_X86_SIMD
    int fc_isa_cpu() noexcept nogil
    int fc_isa_level() noexcept nogil
    const char *fc_isa_name(int level) noexcept nogil
