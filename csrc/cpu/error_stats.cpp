// Error accumulation between a reference and a test tensor, in double, over finite pairs.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../kernels.h"
#include "parallel.h"

namespace qa {
namespace {

void error_run(const float* ref, const float* test, int64_t n, double* acc) {
  double sse = 0, srr = 0, stt = 0, dot = 0, mx = 0;
  int64_t finite = 0;
#pragma omp simd reduction(+ : sse, srr, stt, dot, finite) reduction(max : mx)
  for (int64_t i = 0; i < n; ++i) {
    const double r = ref[i], t = test[i];
    const bool ok = is_finite(r) && is_finite(t);
    const double rr = ok ? r : 0.0, tt = ok ? t : 0.0;
    const double d = rr - tt;
    sse += d * d;
    srr += rr * rr;
    stt += tt * tt;
    dot += rr * tt;
    mx = std::max(mx, std::fabs(d));
    finite += ok;
  }
  acc[0] += sse;
  acc[1] += srr;
  acc[2] += stt;
  acc[3] += dot;
  acc[4] = std::max(acc[4], mx);
  acc[5] += static_cast<double>(finite);
  acc[6] += static_cast<double>(n - finite);
}

}  // namespace

void error_stats(const float* ref, const float* test, int64_t n, double* acc) {
  const int threads = max_threads_for(n);
  if (threads == 1) return error_run(ref, test, n, acc);
  std::vector<double> parts(static_cast<size_t>(threads) * kErrorStatsSize, 0.0);
#pragma omp parallel num_threads(threads)
  {
    int64_t b, e;
    slice(n, num_threads(), thread_id(), &b, &e);
    error_run(ref + b, test + b, e - b, parts.data() + static_cast<size_t>(thread_id()) * kErrorStatsSize);
  }
  for (int t = 0; t < threads; ++t) {
    const double* p = parts.data() + static_cast<size_t>(t) * kErrorStatsSize;
    for (int k = 0; k < kErrorStatsSize; ++k) acc[k] = (k == 4) ? std::max(acc[k], p[k]) : acc[k] + p[k];
  }
}

}  // namespace qa
