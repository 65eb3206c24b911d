/* fc_optim.h: the inner loop of the SGD update, (sgd.buf) and (sgd.step), for optim.pyx.
 *
 * Structure as fc_relu.h: the loop is written once (a macro, for float and double), as
 * plain C loops over CHUNK values without branches inside, which the compiler vectorises;
 * small wrappers compile it for the baseline (SSE2 on x86-64) and, with gcc or clang on
 * x86-64, again under target("avx2") and target("avx512f"); optim.pyx calls the copy
 * fc_isa_level() picks. optim.pyx is compiled with -ffp-contract=off: every copy rounds
 * after each multiply and each add, as NumPy does, so all give the reference's bits.
 *
 * fc_sgd_<type>(p, grad, buf, n, lr, momentum, damp_keep, weight_decay, nesterov,
 * first_step): g = grad + weight_decay * p (weight_decay != 0); with momentum,
 * buf = g (first step) or momentum * buf + damp_keep * g, and the direction is
 * g + momentum * buf (nesterov) or buf; then p -= lr * direction. damp_keep is
 * 1 - dampening (1 * g is g, bit for bit). Pointer arguments are IN (read) or OUT.
 */
#ifndef FC_OPTIM_H
#define FC_OPTIM_H

#include "fc_isa.h"

#define FC_SGD_CHUNK 256        /* values per pass of the loops: g stays in L1 */

#define FC_SGD_LOOP(T)                                                                  \
static inline __attribute__((always_inline))                                            \
void fc_sgd_loop_##T(T *p /* IN, OUT */, const T *grad /* IN */, T *buf /* IN, OUT */,  \
                     Py_ssize_t n, T lr, T momentum, T damp_keep, T weight_decay,       \
                     int nesterov, int first_step)                                      \
{                                                                                       \
    T g[FC_SGD_CHUNK];                                                                  \
    for (Py_ssize_t i0 = 0; i0 < n; i0 += FC_SGD_CHUNK) {                               \
        Py_ssize_t m = n - i0 < FC_SGD_CHUNK ? n - i0 : FC_SGD_CHUNK;                   \
        T *pc = p + i0, *bc = buf + i0;                                                 \
        const T *gc = grad + i0;                                                        \
        if (weight_decay != 0)                                                          \
            for (Py_ssize_t i = 0; i < m; i++) g[i] = gc[i] + weight_decay * pc[i];     \
        else                                                                            \
            for (Py_ssize_t i = 0; i < m; i++) g[i] = gc[i];                            \
        if (momentum != 0) {                                                            \
            if (first_step)                                                             \
                for (Py_ssize_t i = 0; i < m; i++) bc[i] = g[i];                        \
            else                                                                        \
                for (Py_ssize_t i = 0; i < m; i++)                                      \
                    bc[i] = momentum * bc[i] + damp_keep * g[i];                        \
            if (nesterov)                                                               \
                for (Py_ssize_t i = 0; i < m; i++) g[i] = g[i] + momentum * bc[i];      \
            else                                                                        \
                for (Py_ssize_t i = 0; i < m; i++) g[i] = bc[i];                        \
        }                                                                               \
        for (Py_ssize_t i = 0; i < m; i++) pc[i] = pc[i] - lr * g[i];                   \
    }                                                                                   \
}

#if FC_HAVE_X86_SIMD
#define FC_SGD_COPY(T, ISA, TARGET)                                                     \
static __attribute__((target(TARGET), noinline))                                        \
void fc_sgd_##T##_##ISA(T *p, const T *grad, T *buf, Py_ssize_t n, T lr, T momentum,    \
                        T damp_keep, T weight_decay, int nesterov, int first_step)      \
{ fc_sgd_loop_##T(p, grad, buf, n, lr, momentum, damp_keep, weight_decay, nesterov,     \
                  first_step); }
#define FC_SGD_PICK(T)                                                                  \
    if (isa >= FC_ISA_AVX512) {                                                         \
        fc_sgd_##T##_avx512(p, grad, buf, n, lr, momentum, damp_keep, weight_decay,     \
                            nesterov, first_step);                                      \
        return;                                                                         \
    }                                                                                   \
    if (isa >= FC_ISA_AVX2) {                                                           \
        fc_sgd_##T##_avx2(p, grad, buf, n, lr, momentum, damp_keep, weight_decay,       \
                          nesterov, first_step);                                        \
        return;                                                                         \
    }
#else
#define FC_SGD_COPY(T, ISA, TARGET)
#define FC_SGD_PICK(T)
#endif

/* The call optim.pyx makes: the copy for isa (fc_isa_level() at import). */
#define FC_SGD(T)                                                                       \
FC_SGD_LOOP(T)                                                                          \
FC_SGD_COPY(T, avx2, "avx2")                                                            \
FC_SGD_COPY(T, avx512, "avx512f")                                                       \
static void fc_sgd_##T(int isa, T *p, const T *grad, T *buf, Py_ssize_t n, T lr,        \
                       T momentum, T damp_keep, T weight_decay, int nesterov,           \
                       int first_step)                                                  \
{                                                                                       \
    FC_SGD_PICK(T)                                                                      \
    (void)isa;                                                                          \
    fc_sgd_loop_##T(p, grad, buf, n, lr, momentum, damp_keep, weight_decay, nesterov,   \
                    first_step);                                                        \
}

FC_SGD(float)
FC_SGD(double)

#endif
