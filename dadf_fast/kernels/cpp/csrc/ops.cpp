// The one schema file of dadf_fast's C++/CUDA ops, and the Python module dadf_fast._C.
//
// Importing dadf_fast._C loads this library, which registers the schemas below in the
// `dadf_fast` namespace (torch.ops.dadf_fast.*); the CPU kernels (csrc/cpu/) and the CUDA
// kernels (csrc/cuda/, when built) register their implementations for the same names.
// Fake (meta) kernels and autograd formulas (all three ops, multiscale_score included) are
// registered from Python (dadf_fast/kernels/cpp/ops.py).
#include <Python.h>
#include <torch/library.h>

// DADF_FAST_SOURCE_HASH: the hash of csrc/ at build time, passed by the JIT build
// (dadf_fast/kernels/cpp/build.py) as a bare -D token, so that no shell quoting is needed.
#define DADF_FAST_STR_(x) #x
#define DADF_FAST_STR(x) DADF_FAST_STR_(x)

TORCH_LIBRARY(dadf_fast, m) {
  // One affine coupling step, FrEIA AllInOneBlock semantics (see dadf_fast.reference).
  // reverse=false: x is the step input, returns (y, logdet [B]);
  // reverse=true: x is the step output, returns (input, -logdet).
  // compute_logdet=false returns an empty [0] logdet (inference fast path).
  m.def(
      "affine_coupling_fwd(Tensor x, Tensor a, Tensor g, Tensor b, Tensor perm, float clamp, float a_scale, "
      "bool reverse, bool compute_logdet) -> (Tensor, Tensor)");
  // Gradients of affine_coupling_fwd (either direction) w.r.t. x, a, g, b given the gradient
  // of its first output and (optionally) of the log-det.
  m.def(
      "affine_coupling_bwd(Tensor grad_out, Tensor? grad_logdet, Tensor x, Tensor a, Tensor g, Tensor b, "
      "Tensor perm, float clamp, float a_scale, bool reverse) -> (Tensor, Tensor, Tensor, Tensor)");
  // Per-sample 0.5*sum(z^2) - logdet, and its gradients (grad_z, grad_logdet).
  m.def("flow_nll_fwd(Tensor z, Tensor logdet) -> Tensor");
  m.def("flow_nll_bwd(Tensor grad, Tensor z) -> (Tensor, Tensor)");
  // Anomaly map [B,1,H,W] = 1 - mean_s upsample(exp(-0.5 mean_c z_s^2)) and per-image score.
  m.def("multiscale_score(Tensor[] zs, int H, int W, str reduce) -> (Tensor, Tensor)");
  // Index [Q] (int64) of each query's nearest memory row, exact, pruned by the lower bound of
  // an index of the memory (mean [D], orthonormal basis [D, k], the memory's augmented
  // coordinates [k+1, M] and squared centred norms [M]; built by kernels/cpp/knn_index.py).
  m.def(
      "nearest_index_bounded(Tensor queries, Tensor memory, Tensor mean, Tensor basis, Tensor memory_bound_t, "
      "Tensor memory_sqnorm) -> Tensor");
}

namespace {

PyModuleDef dadf_module = {
    PyModuleDef_HEAD_INIT,
    "_C",
    "dadf_fast C++/CUDA kernels (registered as torch.ops.dadf_fast.*).",
    -1,
    nullptr,
};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* mod = PyModule_Create(&dadf_module);
  if (mod == nullptr) return nullptr;
#ifdef DADF_FAST_SOURCE_HASH
  if (PyModule_AddStringConstant(mod, "SOURCE_HASH", DADF_FAST_STR(DADF_FAST_SOURCE_HASH)) < 0) goto fail;
#endif
#ifdef DADF_FAST_WITH_CUDA
  Py_INCREF(Py_True);
  if (PyModule_AddObject(mod, "WITH_CUDA", Py_True) < 0) goto fail;
#else
  Py_INCREF(Py_False);
  if (PyModule_AddObject(mod, "WITH_CUDA", Py_False) < 0) goto fail;
#endif
  return mod;
fail:
  Py_DECREF(mod);
  return nullptr;
}
