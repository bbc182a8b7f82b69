// Splitting work over OpenMP threads: small inputs stay on one thread.
#pragma once

#include <algorithm>
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

// Hot loops get an x86-64-v3 (AVX2 + FMA) clone picked at load time (GCC/Clang on x86-64
// Linux); the default clone is plain x86-64 (SSE2), so the wheel runs everywhere.
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(QA_NO_CLONES)
#define QA_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define QA_HOT
#endif

namespace qa {

// Below this many elements a parallel region costs more than it saves.
constexpr int64_t kParallelGrain = 1 << 15;

inline int max_threads_for(int64_t work) {
#ifdef _OPENMP
  if (work < kParallelGrain) return 1;
  int64_t by_work = work / kParallelGrain;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), by_work)));
#else
  (void)work;
  return 1;
#endif
}

inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

inline int num_threads() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// [begin, end) of the t-th of `parts` near-equal slices of [0, n), aligned to 16 elements.
inline void slice(int64_t n, int parts, int t, int64_t* begin, int64_t* end) {
  int64_t chunk = (n + parts - 1) / parts;
  chunk = (chunk + 15) / 16 * 16;
  *begin = std::min<int64_t>(n, chunk * t);
  *end = std::min<int64_t>(n, *begin + chunk);
}

}  // namespace qa
