/* fc_relu.h: the inner loops of ReLU, (relu.fwd) and (relu.bwd), and of the residual add
 * (add.fwd), y = a + b or y = relu(a + b), for activation.pyx.
 *
 * Structure: each loop is written once per dtype, as a plain C loop in an always-inline
 * function; small wrappers compile it for the baseline of the CPU family (SSE2 on x86-64)
 * and, on x86-64 with gcc or clang, again under __attribute__((target("avx2"))) and
 * target("avx512f"). A loop this simple is limited by how many values one instruction
 * handles, so the wide copies are faster (numbers in docs/performance.md). activation.pyx
 * asks fc_isa_level() (fc_isa.h, the one place that decides the instruction set) once at
 * import and calls the matching copy. Every copy does the same compare and select on each
 * value, so the results are the same bits on any CPU.
 *
 * Why the loops look as they do: v <= 0 is false for NaN, so the forward keeps NaN (as
 * np.maximum and PyTorch). The in-place forward has its own loop over one pointer: with two,
 * gcc guards the vector loop with a run-time overlap test, which x == y fails. The backward
 * reads dy[i] whatever y[i] is: read inside the condition, gcc kept a mispredicted branch.
 * The add likewise has its own loop for y == a (in place): it then reads through y alone.
 * Pointer arguments are marked IN (read) or OUT (written).
 */
#ifndef FC_RELU_H
#define FC_RELU_H

#include "fc_isa.h"

#define FC_INLINE static inline __attribute__((always_inline))

FC_INLINE void fc_relu_fwd_f32(const float *x /* IN */, float *y /* OUT */, Py_ssize_t n)
{
    if (x == y) {
        for (Py_ssize_t i = 0; i < n; i++) { float v = y[i]; y[i] = v <= 0 ? 0 : v; }
    } else {
        for (Py_ssize_t i = 0; i < n; i++) { float v = x[i]; y[i] = v <= 0 ? 0 : v; }
    }
}

FC_INLINE void fc_relu_fwd_f64(const double *x /* IN */, double *y /* OUT */, Py_ssize_t n)
{
    if (x == y) {
        for (Py_ssize_t i = 0; i < n; i++) { double v = y[i]; y[i] = v <= 0 ? 0 : v; }
    } else {
        for (Py_ssize_t i = 0; i < n; i++) { double v = x[i]; y[i] = v <= 0 ? 0 : v; }
    }
}

FC_INLINE void fc_relu_bwd_f32(const float *dy /* IN */, const float *y /* IN */,
                               float *dx /* OUT */, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) { float d = dy[i]; dx[i] = y[i] > 0 ? d : 0; }
}

FC_INLINE void fc_relu_bwd_f64(const double *dy /* IN */, const double *y /* IN */,
                               double *dx /* OUT */, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) { double d = dy[i]; dx[i] = y[i] > 0 ? d : 0; }
}

/* (add.fwd): y = a + b, then max(., 0) when relu; y may be a (in place), never b. */
FC_INLINE void fc_add_f32(const float *a /* IN */, const float *b /* IN */, float *y /* OUT */,
                          Py_ssize_t n, int relu)
{
    if (relu && y == a) {
        for (Py_ssize_t i = 0; i < n; i++) { float v = y[i] + b[i]; y[i] = v <= 0 ? 0 : v; }
    } else if (relu) {
        for (Py_ssize_t i = 0; i < n; i++) { float v = a[i] + b[i]; y[i] = v <= 0 ? 0 : v; }
    } else if (y == a) {
        for (Py_ssize_t i = 0; i < n; i++) y[i] += b[i];
    } else {
        for (Py_ssize_t i = 0; i < n; i++) y[i] = a[i] + b[i];
    }
}

FC_INLINE void fc_add_f64(const double *a /* IN */, const double *b /* IN */,
                          double *y /* OUT */, Py_ssize_t n, int relu)
{
    if (relu && y == a) {
        for (Py_ssize_t i = 0; i < n; i++) { double v = y[i] + b[i]; y[i] = v <= 0 ? 0 : v; }
    } else if (relu) {
        for (Py_ssize_t i = 0; i < n; i++) { double v = a[i] + b[i]; y[i] = v <= 0 ? 0 : v; }
    } else if (y == a) {
        for (Py_ssize_t i = 0; i < n; i++) y[i] += b[i];
    } else {
        for (Py_ssize_t i = 0; i < n; i++) y[i] = a[i] + b[i];
    }
}

#if FC_HAVE_X86_SIMD
#define FC_AVX2_FN static __attribute__((target("avx2"), noinline))
#define FC_AVX512_FN static __attribute__((target("avx512f"), noinline))
FC_AVX2_FN void fc_relu_fwd_f32_avx2(const float *x, float *y, Py_ssize_t n)
{ fc_relu_fwd_f32(x, y, n); }
FC_AVX2_FN void fc_relu_fwd_f64_avx2(const double *x, double *y, Py_ssize_t n)
{ fc_relu_fwd_f64(x, y, n); }
FC_AVX2_FN void fc_relu_bwd_f32_avx2(const float *dy, const float *y, float *dx, Py_ssize_t n)
{ fc_relu_bwd_f32(dy, y, dx, n); }
FC_AVX2_FN void fc_relu_bwd_f64_avx2(const double *dy, const double *y, double *dx, Py_ssize_t n)
{ fc_relu_bwd_f64(dy, y, dx, n); }
FC_AVX512_FN void fc_relu_fwd_f32_avx512(const float *x, float *y, Py_ssize_t n)
{ fc_relu_fwd_f32(x, y, n); }
FC_AVX512_FN void fc_relu_fwd_f64_avx512(const double *x, double *y, Py_ssize_t n)
{ fc_relu_fwd_f64(x, y, n); }
FC_AVX512_FN void fc_relu_bwd_f32_avx512(const float *dy, const float *y, float *dx, Py_ssize_t n)
{ fc_relu_bwd_f32(dy, y, dx, n); }
FC_AVX512_FN void fc_relu_bwd_f64_avx512(const double *dy, const double *y, double *dx,
                                         Py_ssize_t n)
{ fc_relu_bwd_f64(dy, y, dx, n); }
FC_AVX2_FN void fc_add_f32_avx2(const float *a, const float *b, float *y, Py_ssize_t n, int relu)
{ fc_add_f32(a, b, y, n, relu); }
FC_AVX2_FN void fc_add_f64_avx2(const double *a, const double *b, double *y, Py_ssize_t n,
                                int relu)
{ fc_add_f64(a, b, y, n, relu); }
FC_AVX512_FN void fc_add_f32_avx512(const float *a, const float *b, float *y, Py_ssize_t n,
                                    int relu)
{ fc_add_f32(a, b, y, n, relu); }
FC_AVX512_FN void fc_add_f64_avx512(const double *a, const double *b, double *y, Py_ssize_t n,
                                    int relu)
{ fc_add_f64(a, b, y, n, relu); }
#endif

/* The calls activation.pyx makes: the copy for isa (fc_isa_level() at import). */
static void fc_relu_forward_float(int isa, const float *x, float *y, Py_ssize_t n)
{
#if FC_HAVE_X86_SIMD
    if (isa >= FC_ISA_AVX512) { fc_relu_fwd_f32_avx512(x, y, n); return; }
    if (isa >= FC_ISA_AVX2) { fc_relu_fwd_f32_avx2(x, y, n); return; }
#endif
    (void)isa;
    fc_relu_fwd_f32(x, y, n);
}

static void fc_relu_forward_double(int isa, const double *x, double *y, Py_ssize_t n)
{
#if FC_HAVE_X86_SIMD
    if (isa >= FC_ISA_AVX512) { fc_relu_fwd_f64_avx512(x, y, n); return; }
    if (isa >= FC_ISA_AVX2) { fc_relu_fwd_f64_avx2(x, y, n); return; }
#endif
    (void)isa;
    fc_relu_fwd_f64(x, y, n);
}

static void fc_relu_backward_float(int isa, const float *dy, const float *y, float *dx,
                                   Py_ssize_t n)
{
#if FC_HAVE_X86_SIMD
    if (isa >= FC_ISA_AVX512) { fc_relu_bwd_f32_avx512(dy, y, dx, n); return; }
    if (isa >= FC_ISA_AVX2) { fc_relu_bwd_f32_avx2(dy, y, dx, n); return; }
#endif
    (void)isa;
    fc_relu_bwd_f32(dy, y, dx, n);
}

static void fc_relu_backward_double(int isa, const double *dy, const double *y, double *dx,
                                    Py_ssize_t n)
{
#if FC_HAVE_X86_SIMD
    if (isa >= FC_ISA_AVX512) { fc_relu_bwd_f64_avx512(dy, y, dx, n); return; }
    if (isa >= FC_ISA_AVX2) { fc_relu_bwd_f64_avx2(dy, y, dx, n); return; }
#endif
    (void)isa;
    fc_relu_bwd_f64(dy, y, dx, n);
}

static void fc_add_forward_float(int isa, const float *a, const float *b, float *y,
                                 Py_ssize_t n, int relu)
{
#if FC_HAVE_X86_SIMD
    if (isa >= FC_ISA_AVX512) { fc_add_f32_avx512(a, b, y, n, relu); return; }
    if (isa >= FC_ISA_AVX2) { fc_add_f32_avx2(a, b, y, n, relu); return; }
#endif
    (void)isa;
    fc_add_f32(a, b, y, n, relu);
}

static void fc_add_forward_double(int isa, const double *a, const double *b, double *y,
                                  Py_ssize_t n, int relu)
{
#if FC_HAVE_X86_SIMD
    if (isa >= FC_ISA_AVX512) { fc_add_f64_avx512(a, b, y, n, relu); return; }
    if (isa >= FC_ISA_AVX2) { fc_add_f64_avx2(a, b, y, n, relu); return; }
#endif
    (void)isa;
    fc_add_f64(a, b, y, n, relu);
}

#endif
