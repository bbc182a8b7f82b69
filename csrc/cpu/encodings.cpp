// Encoding search over histograms: TF-Enhanced (SQNR grid search) and quantiles for percentile.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../kernels.h"

namespace qa {
namespace {

struct Bins {
  std::vector<double> p, mid;  // only non-empty bins: probability and midpoint
};

Bins nonempty_bins(const int64_t* counts, int64_t nbins, double lo, double width) {
  Bins b;
  double total = 0;
  for (int64_t i = 0; i < nbins; ++i) total += static_cast<double>(counts[i]);
  if (total <= 0) return b;
  for (int64_t i = 0; i < nbins; ++i) {
    if (counts[i] == 0) continue;
    b.p.push_back(static_cast<double>(counts[i]) / total);
    b.mid.push_back(lo + (static_cast<double>(i) + 0.5) * width);
  }
  return b;
}

// quantization noise inside [lo, hi] plus gamma times the saturation noise outside it,
// each bin represented by its midpoint.
double candidate_cost(const Bins& b, double delta, double offset, double steps, double gamma) {
  const double lo = delta * offset, hi = delta * (offset + steps);
  double quant = 0, sat = 0;
  for (size_t i = 0; i < b.p.size(); ++i) {
    const double m = b.mid[i];
    if (m < lo) {
      sat += b.p[i] * (m - lo) * (m - lo);
    } else if (m > hi) {
      sat += b.p[i] * (m - hi) * (m - hi);
    } else {
      const double e = m - delta * round_half_even(m / delta);
      quant += b.p[i] * e * e;
    }
  }
  return quant + gamma * sat;
}

}  // namespace

SearchResult tf_enhanced_search(const int64_t* counts, int64_t nbins, double lo, double width,
                                double obs_min, double obs_max, double steps, int offset_mode,
                                double gamma) {
  const Bins b = nonempty_bins(counts, nbins, lo, width);
  SearchResult best{obs_min, obs_max, std::numeric_limits<double>::infinity()};
  auto consider = [&](double delta, double offset) {
    if (!(delta > 0)) return;
    const double c = candidate_cost(b, delta, offset, steps, gamma);
    if (c < best.cost) best = {delta * offset, delta * (offset + steps), c};  // first minimum wins
  };
  if (offset_mode == 0) {
    const double delta_obs = (obs_max - obs_min) / steps;
    std::vector<double> offsets;
    for (int i = 0; i <= 20; ++i) offsets.push_back(std::round(-steps + i * steps / 20.0));
    offsets.push_back(std::round(obs_min / delta_obs));
    for (int k = 1; k <= 17; ++k) {
      const double delta = k / 16.0 * delta_obs;
      for (double offset : offsets) {
        // Clamp the candidate to the observed range: no levels beyond what was seen.
        const double tmin = std::max(obs_min, delta * offset);
        const double tmax = std::min(obs_max, delta * (offset + steps));
        const double d = (tmax - tmin) / steps;
        if (!(d > 0)) continue;
        consider(d, std::round(tmin / d));
      }
    }
  } else {
    const double abs_max = std::max(std::fabs(obs_min), std::fabs(obs_max));
    const double offset = offset_mode == 2 ? 0.0 : -std::ceil(steps / 2.0);
    const double positive_levels = offset_mode == 2 ? steps : std::floor(steps / 2.0);
    const double delta_max = abs_max / positive_levels;
    for (int k = 1; k <= 101; ++k) consider(k / 100.0 * delta_max, offset);
  }
  return best;
}

void tf_enhanced_search_per_channel(const int64_t* counts, int64_t channels, int64_t nbins,
                                    const double* lo, const double* width, const double* obs_min,
                                    const double* obs_max, double num_steps, int offset_mode,
                                    double gamma, double* min, double* max, double* cost) {
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t c = 0; c < channels; ++c) {
    const SearchResult r = tf_enhanced_search(counts + c * nbins, nbins, lo[c], width[c], obs_min[c],
                                              obs_max[c], num_steps, offset_mode, gamma);
    min[c] = r.min;
    max[c] = r.max;
    cost[c] = r.cost;
  }
}

double histogram_quantile(const int64_t* counts, int64_t nbins, double lo, double width,
                          double q) {
  double total = 0;
  for (int64_t i = 0; i < nbins; ++i) total += static_cast<double>(counts[i]);
  if (total <= 0) return std::numeric_limits<double>::quiet_NaN();
  const double target = q * total;
  double cum = 0;
  int64_t last = -1;
  for (int64_t i = 0; i < nbins; ++i) {
    if (counts[i] == 0) continue;
    const double c = static_cast<double>(counts[i]);
    if (cum + c >= target) {
      const double frac = std::min(1.0, std::max(0.0, (target - cum) / c));
      return lo + (static_cast<double>(i) + frac) * width;
    }
    cum += c;
    last = i;
  }
  return lo + static_cast<double>(last + 1) * width;
}

}  // namespace qa
