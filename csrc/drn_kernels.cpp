// drn_kernels._C — module init.
//
// The ops' schemas are defined in Python (drn_kernels/_schemas.py); the kernels register themselves at load
// time with TORCH_LIBRARY_IMPL(drn, CPU/CUDA, m) in csrc/cpu and csrc/cuda, so this file only has to make the
// shared library importable as a Python module and say what was compiled in. It uses the plain CPython API
// (no pybind11) to keep the build short.
//
// TORCH_EXTENSION_NAME is set by torch.utils.cpp_extension: "_C" for setup.py's drn_kernels._C, and the JIT
// name (e.g. drn_kernels_C_cpu) for the build on first use. The test library (drn_kernels_C_testing: csrc/testing,
// drn_kernels/_build/testing.py) is made importable by this same file.
#include <Python.h>

#include "cpu/cpu_options.h"

#ifndef TORCH_EXTENSION_NAME
#define TORCH_EXTENSION_NAME _C
#endif
#define DRN_STR_(x) #x
#define DRN_STR(x) DRN_STR_(x)
#define DRN_CAT_(a, b) a##b
#define DRN_CAT(a, b) DRN_CAT_(a, b)

namespace {

PyObject* has_cuda(PyObject*, PyObject*) {
#ifdef DRN_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

PyObject* has_openmp(PyObject*, PyObject*) {
#ifdef _OPENMP
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

// set_cpu_options(conv, winograd_tile, isa, poison, prefetch): drn_kernels.settings.CpuOptions.codes(), validated
// there.
PyObject* set_cpu_options(PyObject*, PyObject* args) {
  int conv = 0, tile = 4, isa = -1, poison = 0, prefetch = 0;
  if (!PyArg_ParseTuple(args, "iiipi", &conv, &tile, &isa, &poison, &prefetch)) return nullptr;
  if (conv < 0 || conv > 3 || (tile != 2 && tile != 4) || isa < -1 || isa > 2 || prefetch < 0 || prefetch > 2) {
    PyErr_Format(PyExc_ValueError, "set_cpu_options: conv %d, winograd_tile %d, isa %d or prefetch %d out of range",
                 conv, tile, isa, prefetch);
    return nullptr;
  }
  auto& options = drn::cpu::cpu_options();
  options.conv.store(conv);
  options.winograd_tile.store(tile);
  options.isa.store(isa);
  options.poison.store(poison != 0);
  options.prefetch.store(prefetch);
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"set_cpu_options", set_cpu_options, METH_VARARGS,
     "set_cpu_options(conv, winograd_tile, isa, poison, prefetch): the cpu backend's settings "
     "(see csrc/cpu/cpu_options.h)."},
    {"has_cuda", has_cuda, METH_NOARGS, "True when the CUDA kernels (csrc/cuda) were compiled in."},
    {"has_openmp", has_openmp, METH_NOARGS, "True when the CPU kernels were compiled with OpenMP (parallel)."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, DRN_STR(TORCH_EXTENSION_NAME),
    "drn_kernels._C: CPU (and CUDA) kernels registered as torch.ops.drn.*_native", -1, methods,
};

}  // namespace

PyMODINIT_FUNC DRN_CAT(PyInit_, TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&module_def); }
