"""Adapters that put dadf-fast's kernels into models built with other libraries.

:func:`accelerate` swaps every FrEIA-0.2-semantics ``AllInOneBlock`` of a model (FrEIA's own
class, anomalib's vendored copy) for :class:`dadf_fast.nn.AllInOneBlock` with the same
weights and function, in place, and says what it replaced and what it left (and why).
Neither FrEIA nor anomalib is imported here: a model that holds their blocks has imported
them already.  See docs/integrations.md.
"""
from dadf_fast.integrations.freia import AccelerationReport, accelerate

__all__ = ["accelerate", "AccelerationReport"]
