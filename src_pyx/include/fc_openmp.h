/* fc_openmp.h: whether the kernels were built with OpenMP, and the two runtime calls
 * fastconv makes outside prange. Without OpenMP (a compiler without it, or
 * FASTCONV_NO_OPENMP=1) prange runs serially and these stand-ins report one thread. */
#ifndef FC_OPENMP_H
#define FC_OPENMP_H

#ifdef _OPENMP
#include <omp.h>
#define FASTCONV_OPENMP 1
#else
#define FASTCONV_OPENMP 0
static int omp_get_max_threads(void) { return 1; }
static void omp_set_num_threads(int n) { (void)n; }
#endif

#endif
