// Checked access to numpy buffers from pybind11, shared by the CPU and CUDA modules.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

namespace qa {

// The public Python layer converts; here a wrong buffer is a caller bug that must not crash.
template <typename T>
T* buffer_of(const pybind11::array& a, const char* name, bool writable, pybind11::ssize_t size = -1) {
  namespace py = pybind11;
  if (!a.dtype().is(py::dtype::of<T>()))
    throw py::value_error(std::string(name) + ": expected dtype " +
                          std::string(py::str(py::dtype::of<T>())) + ", got " +
                          std::string(py::str(a.dtype())));
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + ": array must be C-contiguous");
  if (writable && !a.writeable()) throw py::value_error(std::string(name) + ": array is read-only");
  if (size >= 0 && a.size() != size)
    throw py::value_error(std::string(name) + ": expected " + std::to_string(size) +
                          " elements, got " + std::to_string(a.size()));
  return static_cast<T*>(const_cast<void*>(a.data()));
}

}  // namespace qa
