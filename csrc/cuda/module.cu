// qa._cuda: the CUDA kernels over raw device pointers, an owning DeviceArray, and DLPack parsing.
//
// Private: qa/_device.py extracts pointers, shapes and streams from device arrays
// (__cuda_array_interface__ or DLPack) and calls these functions; qa.kernels is the public API.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <string>
#include <vector>

#include "../py_buffers.h"
#include "kernels.cuh"

namespace py = pybind11;
using namespace py::literals;

namespace {

using qa::cuda::DeviceGuard;
using qa::cuda::check;

// ---- pointers -------------------------------------------------------------------------------

// Where a pointer can be used by a kernel: its device address and the device that owns it.
struct Target {
  void* ptr;
  int device;
};

// Refuses host memory the GPU cannot address; a wrong pointer must not crash the process.
Target locate(uintptr_t address, const char* what) {
  void* ptr = reinterpret_cast<void*>(address);
  cudaPointerAttributes attr;
  check(cudaPointerGetAttributes(&attr, ptr), what);
  switch (attr.type) {
    case cudaMemoryTypeDevice:
    case cudaMemoryTypeManaged:
      return {ptr, attr.device};
    case cudaMemoryTypeHost:  // page-locked host memory mapped into the device's address space
      if (attr.devicePointer != nullptr) return {attr.devicePointer, attr.device};
      break;
    default:
      break;
  }
  throw py::value_error(std::string(what) + ": pointer " + std::to_string(address) +
                        " is not CUDA device memory");
}

// Two buffers used by one kernel must live on the same device.
int same_device(const Target& a, const Target& b, const char* what) {
  if (a.device != b.device)
    throw py::value_error(std::string(what) + ": arrays are on different devices (" +
                          std::to_string(a.device) + " and " + std::to_string(b.device) + ")");
  return a.device;
}

void check_count(int64_t n, const char* what) {
  if (n < 0) throw py::value_error(std::string(what) + " must not be negative");
}

// ---- host (numpy) arguments -----------------------------------------------------------------

template <typename T>
T* host_data(py::array& a, const char* name, py::ssize_t size = -1) {
  return qa::buffer_of<T>(a, name, true, size);
}

qa::Rounding rounding_of(int rounding) {
  if (rounding != 0 && rounding != 1) throw py::value_error("rounding must be 0 (half even) or 1 (half away)");
  return static_cast<qa::Rounding>(rounding);
}

// ---- device count ---------------------------------------------------------------------------

// 0 without a driver or a device: importing and asking must work on any machine.
int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the error so later calls do not report it
    return 0;
  }
  return n;
}

// ---- DeviceArray ----------------------------------------------------------------------------

// An owning, C-contiguous float32 buffer on one device, for results that have nowhere else to
// go; exposes __cuda_array_interface__ so torch, CuPy, Numba and JAX can read it without a copy.
class DeviceArray {
 public:
  DeviceArray(std::vector<int64_t> shape, int device, uintptr_t stream)
      : shape_(std::move(shape)), stream_(stream) {
    size_ = 1;
    for (int64_t d : shape_) {
      if (d < 0) throw py::value_error("DeviceArray: negative dimension in shape");
      if (d != 0 && size_ > (int64_t(1) << 62) / d) throw py::value_error("DeviceArray: shape too large");
      size_ *= d;
    }
    if (device < 0) check(cudaGetDevice(&device), "cudaGetDevice");
    device_ = device;
    if (size_ > 0) {
      DeviceGuard guard(device_);
      check(cudaMalloc(&ptr_, static_cast<size_t>(size_) * sizeof(float)), "cudaMalloc");
    }
  }
  ~DeviceArray() {
    if (ptr_ == nullptr) return;
    // Errors cannot be raised from here (also at interpreter exit, when the runtime may be gone).
    int previous = 0;
    const bool switch_device = cudaGetDevice(&previous) == cudaSuccess && previous != device_;
    if (switch_device) cudaSetDevice(device_);
    cudaFree(ptr_);  // waits for kernels still using the buffer
    if (switch_device) cudaSetDevice(previous);
    cudaGetLastError();
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  py::tuple shape() const {
    py::tuple t(shape_.size());
    for (size_t i = 0; i < shape_.size(); ++i) t[i] = shape_[i];
    return t;
  }
  uintptr_t ptr() const { return reinterpret_cast<uintptr_t>(ptr_); }
  int device() const { return device_; }
  int64_t size() const { return size_; }
  int64_t nbytes() const { return size_ * static_cast<int64_t>(sizeof(float)); }
  uintptr_t stream() const { return stream_; }

  // Version 3; stream 0 is not allowed there, and our 0 is the legacy default stream (1).
  py::dict interface() const {
    return py::dict("shape"_a = shape(), "typestr"_a = "<f4",
                    "data"_a = py::make_tuple(ptr(), false), "strides"_a = py::none(),
                    "version"_a = 3, "stream"_a = stream_ == 0 ? uintptr_t(1) : stream_);
  }

  py::array_t<float> copy_to_host() const {
    std::vector<py::ssize_t> dims(shape_.begin(), shape_.end());
    py::array_t<float> out(dims);
    if (size_ == 0) return out;
    float* dst = out.mutable_data();
    {
      py::gil_scoped_release release;
      DeviceGuard guard(device_);
      const cudaStream_t s = qa::cuda::as_stream(stream_);
      check(cudaMemcpyAsync(dst, ptr_, static_cast<size_t>(nbytes()), cudaMemcpyDeviceToHost, s),
            "cudaMemcpyAsync");
      check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
    }
    return out;
  }

 private:
  std::vector<int64_t> shape_;
  int64_t size_ = 0;
  int device_ = 0;
  uintptr_t stream_ = 0;
  void* ptr_ = nullptr;
};

// ---- DLPack ---------------------------------------------------------------------------------

// The stable ABI of DLPack's legacy DLManagedTensor (dlpack.h, v0.5 to v1.x), declared here
// so the header is not vendored. Only read, never consumed: the capsule keeps ownership.
struct DLDevice {
  int32_t device_type;
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; NULL means C-contiguous
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor*);
};

py::tuple dlpack_info(const py::capsule& capsule) {
  const char* name = PyCapsule_GetName(capsule.ptr());
  if (name == nullptr || std::strcmp(name, "dltensor") != 0)
    throw py::value_error(std::string("expected an unconsumed DLPack capsule named 'dltensor', got '") +
                          (name ? name : "") + "'");
  auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), "dltensor"));
  if (managed == nullptr) throw py::error_already_set();
  const DLTensor& t = managed->dl_tensor;
  if (t.ndim < 0 || (t.ndim > 0 && t.shape == nullptr)) throw py::value_error("malformed DLPack tensor");
  py::tuple shape(t.ndim);
  for (int32_t i = 0; i < t.ndim; ++i) shape[i] = t.shape[i];
  py::object strides = py::none();
  if (t.strides != nullptr) {
    py::tuple s(t.ndim);
    for (int32_t i = 0; i < t.ndim; ++i) s[i] = t.strides[i];
    strides = s;
  }
  const uintptr_t data = reinterpret_cast<uintptr_t>(t.data) + static_cast<uintptr_t>(t.byte_offset);
  return py::make_tuple(data, shape, strides,
                        py::make_tuple(int(t.dtype.code), int(t.dtype.bits), int(t.dtype.lanes)),
                        py::make_tuple(int(t.device.device_type), int(t.device.device_id)));
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "qa's CUDA kernels over raw device pointers (private: use qa.kernels).";
  using qa::cuda::as_stream;

  m.def("device_count", &device_count, "Number of visible CUDA devices; 0 without a driver or GPU.");

  m.def("synchronize", [](uintptr_t stream) {
    py::gil_scoped_release release;
    check(cudaStreamSynchronize(as_stream(stream)), "cudaStreamSynchronize");
  }, "stream"_a, "Blocks until all work queued on the stream has finished.");

  m.def("device_of", [](uintptr_t ptr) { return locate(ptr, "pointer").device; }, "ptr"_a,
        "The device that owns a CUDA pointer.");

  m.def("fake_quant_per_tensor",
        [](uintptr_t x_ptr, uintptr_t y_ptr, int64_t n, double scale, double offset,
           double num_steps, int rounding, bool use_double, uintptr_t stream) {
          check_count(n, "n");
          const qa::Rounding r = rounding_of(rounding);
          if (n == 0) return;
          const Target x = locate(x_ptr, "x"), y = locate(y_ptr, "out");
          const int device = same_device(x, y, "x and out");
          py::gil_scoped_release release;
          DeviceGuard guard(device);
          qa::cuda::fake_quant_per_tensor(static_cast<const float*>(x.ptr), static_cast<float*>(y.ptr),
                                          n, scale, offset, num_steps, r, use_double, as_stream(stream));
        },
        "x_ptr"_a, "y_ptr"_a, "n"_a, "scale"_a, "offset"_a, "num_steps"_a, "rounding"_a,
        "use_double"_a, "stream"_a = 0);

  m.def("fake_quant_per_channel",
        [](uintptr_t x_ptr, uintptr_t y_ptr, int64_t outer, int64_t channels, int64_t inner,
           py::array_t<double, py::array::c_style | py::array::forcecast> scale,
           py::array_t<double, py::array::c_style | py::array::forcecast> offset, double num_steps,
           int rounding, bool use_double, uintptr_t stream) {
          if (outer < 0 || channels <= 0 || inner < 0)
            throw py::value_error("layout [outer, channels, inner] needs outer >= 0, channels > 0, inner >= 0");
          if (scale.size() != channels || offset.size() != channels)
            throw py::value_error("scale and offset need one value per channel (" +
                                  std::to_string(channels) + "), got " + std::to_string(scale.size()) +
                                  " and " + std::to_string(offset.size()));
          const qa::Rounding r = rounding_of(rounding);
          if (outer == 0 || inner == 0) return;
          const Target x = locate(x_ptr, "x"), y = locate(y_ptr, "out");
          const int device = same_device(x, y, "x and out");
          const double* sp = scale.data();
          const double* op = offset.data();
          py::gil_scoped_release release;
          DeviceGuard guard(device);
          qa::cuda::fake_quant_per_channel(static_cast<const float*>(x.ptr), static_cast<float*>(y.ptr),
                                           outer, channels, inner, sp, op, num_steps, r, use_double,
                                           as_stream(stream));
        },
        "x_ptr"_a, "y_ptr"_a, "outer"_a, "channels"_a, "inner"_a, "scale"_a, "offset"_a,
        "num_steps"_a, "rounding"_a, "use_double"_a, "stream"_a = 0);

  m.def("minmax",
        [](uintptr_t x_ptr, int64_t n, uintptr_t stream) {
          check_count(n, "n");
          qa::cuda::MinMaxResult r{INFINITY, -INFINITY, 0, 0, 0};
          if (n > 0) {
            const Target x = locate(x_ptr, "x");
            py::gil_scoped_release release;
            DeviceGuard guard(x.device);
            r = qa::cuda::minmax(static_cast<const float*>(x.ptr), n, as_stream(stream));
          }
          return py::make_tuple(r.lo, r.hi, r.n_nan, r.n_posinf, r.n_neginf);
        },
        "x_ptr"_a, "n"_a, "stream"_a = 0);

  m.def("histogram_add",
        [](uintptr_t x_ptr, int64_t n, double lo, double width, py::array& counts, uintptr_t stream) {
          check_count(n, "n");
          int64_t* cp = host_data<int64_t>(counts, "counts");
          if (!(width > 0)) throw py::value_error("histogram width must be positive");
          const int64_t nbins = counts.size();
          if (nbins < 1) throw py::value_error("counts must hold at least one bin");
          if (n == 0) return;
          const Target x = locate(x_ptr, "x");
          py::gil_scoped_release release;
          DeviceGuard guard(x.device);
          qa::cuda::histogram_add(static_cast<const float*>(x.ptr), n, lo, width, cp, nbins, as_stream(stream));
        },
        "x_ptr"_a, "n"_a, "lo"_a, "width"_a, "counts"_a, "stream"_a = 0);

  m.def("error_stats",
        [](uintptr_t ref_ptr, uintptr_t test_ptr, int64_t n, py::array& acc, uintptr_t stream) {
          check_count(n, "n");
          double* ap = host_data<double>(acc, "acc", qa::cuda::kErrorStatsSize);
          if (n == 0) return;
          const Target ref = locate(ref_ptr, "ref"), test = locate(test_ptr, "test");
          const int device = same_device(ref, test, "ref and test");
          py::gil_scoped_release release;
          DeviceGuard guard(device);
          qa::cuda::error_stats(static_cast<const float*>(ref.ptr), static_cast<const float*>(test.ptr),
                                n, ap, as_stream(stream));
        },
        "ref_ptr"_a, "test_ptr"_a, "n"_a, "acc"_a, "stream"_a = 0);

  m.def("dlpack_info", &dlpack_info, "capsule"_a,
        "(data, shape, strides, (code, bits, lanes), (device_type, device_id)) of a 'dltensor' capsule, "
        "without consuming it.");

  py::class_<DeviceArray>(m, "DeviceArray")
      .def(py::init<std::vector<int64_t>, int, uintptr_t>(), "shape"_a, "device"_a = -1, "stream"_a = 0)
      .def_property_readonly("shape", &DeviceArray::shape)
      .def_property_readonly("ptr", &DeviceArray::ptr)
      .def_property_readonly("device", &DeviceArray::device)
      .def_property_readonly("size", &DeviceArray::size)
      .def_property_readonly("nbytes", &DeviceArray::nbytes)
      .def_property_readonly("stream", &DeviceArray::stream)
      .def_property_readonly("dtype", [](const DeviceArray&) { return py::dtype::of<float>(); })
      .def_property_readonly("__cuda_array_interface__", &DeviceArray::interface)
      .def("copy_to_host", &DeviceArray::copy_to_host, "A numpy copy (waits for the array's stream).")
      .def("__repr__", [](const DeviceArray& a) {
        return "DeviceArray(shape=" + std::string(py::str(a.shape())) + ", dtype=float32, device=" +
               std::to_string(a.device()) + ")";
      });
}
