"""The compute backends behind :mod:`dadf_fast.ops`: ``torch`` (:mod:`dadf_fast.reference`
itself), ``triton`` (fused Triton kernels) and ``cpp`` (the C++/CUDA extension, sources in
``cpp/csrc``).  Each declares what it can run (:mod:`.spec`); :mod:`.registry` collects the
declarations and says which backend can run where, and why not."""
