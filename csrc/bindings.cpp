// The one pybind11 file: exposes the CPU kernels as qa._core (private; qa.kernels is public).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <tuple>

#include "kernels.h"
#include "py_buffers.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace {

template <typename T>
T* data_of(const py::array& a, const char* name, bool writable, py::ssize_t size = -1) {
  return qa::buffer_of<T>(a, name, writable, size);
}

void check_layout(const py::array& x, int64_t outer, int64_t channels, int64_t inner) {
  if (outer < 0 || channels <= 0 || inner < 0 || outer * channels * inner != x.size())
    throw py::value_error("layout [outer, channels, inner] = [" + std::to_string(outer) + ", " +
                          std::to_string(channels) + ", " + std::to_string(inner) +
                          "] does not match " + std::to_string(x.size()) + " elements");
}

int64_t nbins_of(const py::array& counts, int64_t rows) {
  if (rows <= 0 || counts.size() % rows != 0 || counts.size() / rows < 1)
    throw py::value_error("counts must hold a whole number of bins per channel");
  return counts.size() / rows;
}

py::array_t<double> doubles(py::ssize_t n) { return py::array_t<double>(n); }

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "qa's C++ kernels (private: use qa.kernels).";
  using qa::Rounding;

  m.def("max_threads", []() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
  });
  m.def("has_openmp", []() {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
  });

  m.def("fake_quant_per_tensor",
        [](const py::array& x, py::array& out, double scale, double offset, double steps,
           int rounding, bool use_double) {
          const float* xp = data_of<float>(x, "x", false);
          float* yp = data_of<float>(out, "out", true, x.size());
          py::gil_scoped_release release;
          qa::fake_quant_per_tensor(xp, yp, x.size(), scale, offset, steps,
                                    static_cast<Rounding>(rounding), use_double);
        });

  m.def("fake_quant_per_channel",
        [](const py::array& x, py::array& out, int64_t outer, int64_t channels, int64_t inner,
           const py::array& scale, const py::array& offset, double steps, int rounding,
           bool use_double) {
          check_layout(x, outer, channels, inner);
          const float* xp = data_of<float>(x, "x", false);
          float* yp = data_of<float>(out, "out", true, x.size());
          const double* sp = data_of<double>(scale, "scale", false, channels);
          const double* op = data_of<double>(offset, "offset", false, channels);
          py::gil_scoped_release release;
          qa::fake_quant_per_channel(xp, yp, outer, channels, inner, sp, op, steps,
                                     static_cast<Rounding>(rounding), use_double);
        });

  m.def("minmax", [](const py::array& x) {
    const float* xp = data_of<float>(x, "x", false);
    qa::MinMax r;
    {
      py::gil_scoped_release release;
      r = qa::minmax(xp, x.size());
    }
    return py::make_tuple(r.lo, r.hi, r.n_nan, r.n_posinf, r.n_neginf);
  });

  m.def("minmax_per_channel",
        [](const py::array& x, int64_t outer, int64_t channels, int64_t inner) {
          check_layout(x, outer, channels, inner);
          const float* xp = data_of<float>(x, "x", false);
          auto lo = doubles(channels), hi = doubles(channels);
          py::array_t<int64_t> nan(channels), pinf(channels), ninf(channels);
          double *lp = lo.mutable_data(), *hp = hi.mutable_data();
          int64_t *np_ = nan.mutable_data(), *pp = pinf.mutable_data(), *mp = ninf.mutable_data();
          {
            py::gil_scoped_release release;
            qa::minmax_per_channel(xp, outer, channels, inner, lp, hp, np_, pp, mp);
          }
          return py::make_tuple(lo, hi, nan, pinf, ninf);
        });

  m.def("histogram_add", [](const py::array& x, double lo, double width, py::array& counts) {
    const float* xp = data_of<float>(x, "x", false);
    int64_t* cp = data_of<int64_t>(counts, "counts", true);
    if (!(width > 0)) throw py::value_error("histogram width must be positive");
    const int64_t nbins = nbins_of(counts, 1);
    py::gil_scoped_release release;
    qa::histogram_add(xp, x.size(), lo, width, cp, nbins);
  });

  m.def("histogram_add_per_channel",
        [](const py::array& x, int64_t outer, int64_t channels, int64_t inner,
           const py::array& lo, const py::array& width, py::array& counts) {
          check_layout(x, outer, channels, inner);
          const float* xp = data_of<float>(x, "x", false);
          const double* lp = data_of<double>(lo, "lo", false, channels);
          const double* wp = data_of<double>(width, "width", false, channels);
          int64_t* cp = data_of<int64_t>(counts, "counts", true);
          const int64_t nbins = nbins_of(counts, channels);
          for (int64_t c = 0; c < channels; ++c)
            if (!(wp[c] > 0)) throw py::value_error("histogram width must be positive");
          py::gil_scoped_release release;
          qa::histogram_add_per_channel(xp, outer, channels, inner, lp, wp, cp, nbins);
        });

  m.def("histogram_grow",
        [](py::array& counts, double lo, double width, double need_lo, double need_hi) {
          int64_t* cp = data_of<int64_t>(counts, "counts", true);
          if (!(width > 0) || !std::isfinite(need_lo) || !std::isfinite(need_hi) || need_lo > need_hi)
            throw py::value_error("histogram_grow needs width > 0 and a finite need_lo <= need_hi");
          const double k = qa::histogram_grow(cp, counts.size(), &lo, &width, need_lo, need_hi);
          return py::make_tuple(lo, width, k);
        });

  m.def("histogram_grow_per_channel",
        [](py::array& counts, py::array& lo, py::array& width, const py::array& need_lo,
           const py::array& need_hi) {
          const py::ssize_t channels = lo.size();
          int64_t* cp = data_of<int64_t>(counts, "counts", true);
          const int64_t nbins = nbins_of(counts, channels);
          double* lp = data_of<double>(lo, "lo", true);
          double* wp = data_of<double>(width, "width", true, channels);
          const double* a = data_of<double>(need_lo, "need_lo", false, channels);
          const double* b = data_of<double>(need_hi, "need_hi", false, channels);
          // Channels without data in this batch (need_lo > need_hi) are left alone.
          for (py::ssize_t c = 0; c < channels; ++c)
            if (a[c] <= b[c] && (!(wp[c] > 0) || !std::isfinite(a[c]) || !std::isfinite(b[c])))
              throw py::value_error("histogram_grow needs width > 0 and finite ranges");
          py::gil_scoped_release release;
          qa::histogram_grow_per_channel(cp, channels, nbins, lp, wp, a, b);
        });

  m.def("tf_enhanced_search",
        [](const py::array& counts, double lo, double width, double obs_min, double obs_max,
           double steps, int mode, double gamma) {
          const int64_t* cp = data_of<int64_t>(counts, "counts", false);
          qa::SearchResult r;
          {
            py::gil_scoped_release release;
            r = qa::tf_enhanced_search(cp, counts.size(), lo, width, obs_min, obs_max, steps, mode, gamma);
          }
          return py::make_tuple(r.min, r.max, r.cost);
        });

  m.def("tf_enhanced_search_per_channel",
        [](const py::array& counts, const py::array& lo, const py::array& width,
           const py::array& obs_min, const py::array& obs_max, double steps, int mode,
           double gamma) {
          const py::ssize_t channels = lo.size();
          const int64_t* cp = data_of<int64_t>(counts, "counts", false);
          const int64_t nbins = nbins_of(counts, channels);
          const double* lp = data_of<double>(lo, "lo", false);
          const double* wp = data_of<double>(width, "width", false, channels);
          const double* a = data_of<double>(obs_min, "obs_min", false, channels);
          const double* b = data_of<double>(obs_max, "obs_max", false, channels);
          auto mn = doubles(channels), mx = doubles(channels), cost = doubles(channels);
          double *mnp = mn.mutable_data(), *mxp = mx.mutable_data(), *cop = cost.mutable_data();
          {
            py::gil_scoped_release release;
            qa::tf_enhanced_search_per_channel(cp, channels, nbins, lp, wp, a, b, steps, mode, gamma,
                                               mnp, mxp, cop);
          }
          return py::make_tuple(mn, mx, cost);
        });

  m.def("histogram_quantile", [](const py::array& counts, double lo, double width, double q) {
    const int64_t* cp = data_of<int64_t>(counts, "counts", false);
    return qa::histogram_quantile(cp, counts.size(), lo, width, q);
  });

  m.def("error_stats", [](const py::array& ref, const py::array& test, py::array& acc) {
    const float* rp = data_of<float>(ref, "ref", false);
    const float* tp = data_of<float>(test, "test", false, ref.size());
    double* ap = data_of<double>(acc, "acc", true, qa::kErrorStatsSize);
    py::gil_scoped_release release;
    qa::error_stats(rp, tp, ref.size(), ap);
  });
}
