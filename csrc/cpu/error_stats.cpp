// Error accumulation between a reference and a test tensor, in double, over finite pairs.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../kernels.h"
#include "parallel.h"

namespace qa {
namespace {

struct Sums {
  double sse = 0, srr = 0, stt = 0, dot = 0, mx = 0;
  int64_t finite = 0;
};

// Pairs where either value is NaN/inf contribute nothing but a count.
__attribute__((always_inline)) inline void accumulate_masked(const float* ref, const float* test, int64_t n, Sums* s) {
  double sse = 0, srr = 0, stt = 0, dot = 0, mx = 0;
  int64_t finite = 0;
#pragma omp simd reduction(+ : sse, srr, stt, dot, finite) reduction(max : mx)
  for (int64_t i = 0; i < n; ++i) {
    double r = ref[i], t = test[i];
    const bool ok = is_finite(r) && is_finite(t);
    r = ok ? r : 0.0;
    t = ok ? t : 0.0;
    finite += ok;
    const double d = r - t;  // exact unless the exponents differ by more than ~29 (then 1 ulp)
    sse += d * d;
    srr += r * r;
    stt += t * t;
    dot += r * t;
    mx = std::max(mx, std::fabs(d));
  }
  s->sse += sse;
  s->srr += srr;
  s->stt += stt;
  s->dot += dot;
  s->mx = std::max(s->mx, mx);
  s->finite += finite;
}

// Blocks of 64K pairs are summed optimistically with a sticky NaN flag (r - r is NaN for NaN
// and inf); only a block that holds non-finite values is summed again with per-element masks.
// Block sums are added into the totals, which also keeps the rounding error of long sums low.
QA_HOT void error_run(const float* ref, const float* test, int64_t n, double* acc) {
  constexpr int64_t kBlock = 1 << 16;
  Sums s;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t m = std::min(kBlock, n - b);
    const float* rb = ref + b;
    const float* tb = test + b;
    double sse = 0, srr = 0, stt = 0, dot = 0, mx = 0, flag = 0;
#pragma omp simd reduction(+ : sse, srr, stt, dot, flag) reduction(max : mx)
    for (int64_t i = 0; i < m; ++i) {
      const double r = rb[i], t = tb[i], d = r - t;
      sse += d * d;
      srr += r * r;
      stt += t * t;
      dot += r * t;
      mx = std::max(mx, std::fabs(d));
      flag += (r - r) + (t - t);
    }
    if (flag == 0.0) {
      s.sse += sse, s.srr += srr, s.stt += stt, s.dot += dot, s.finite += m;
      s.mx = std::max(s.mx, mx);
    } else {
      accumulate_masked(rb, tb, m, &s);
    }
  }
  acc[0] += s.sse;
  acc[1] += s.srr;
  acc[2] += s.stt;
  acc[3] += s.dot;
  acc[4] = std::max(acc[4], s.mx);
  acc[5] += static_cast<double>(s.finite);
  acc[6] += static_cast<double>(n - s.finite);
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
