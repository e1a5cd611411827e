"""The compute backends behind :mod:`dadf_fast.ops`: ``triton`` (fused Triton kernels) and
``cpp`` (the C++/CUDA extension, sources in ``cpp/csrc``); the ``torch`` backend is
:mod:`dadf_fast.reference` itself.  :mod:`.registry` says which can run where, and why not."""
