"""Fixed-batch inference replayed from a CUDA graph.

At the lite preset a GPU inference is many small kernels (backbone blocks, attention, eight
coupling steps per scale, scoring); at small batch their launch latency, not their work,
bounds throughput.  A CUDA graph records the launches once and replays them with one call.
The alternative, ``torch.compile(mode="reduce-overhead")``, also uses CUDA graphs but must
trace the custom ops through their fake kernels; ``dadf-fast bench`` measures both
(``auto-graph`` and ``auto-compile`` rows).
"""
from __future__ import annotations

import torch


class CUDAGraphInference:
    """``model``'s eval-mode inference at a fixed ``batch_size``, captured in a CUDA graph.

    ``graph(images [batch_size, 3, S, S]) -> {"anomaly_map": [B, 1, S, S], "score": [B]}``,
    equal to ``model.predict(images)`` (the same kernels replayed; images of any float dtype
    are copied into the float32 buffer; unlike ``predict`` a non-finite map is returned as it
    is, without the host sync a check would cost: ``dadf_fast.models.inputs.check_finite_output``).  The input is copied into
    a static buffer and the outputs are cloned out of the graph's static outputs, so results
    of earlier calls stay valid.  The model must not change (weights, backend, dtype) after
    capture: the graph holds pointers to its parameters and the kernels chosen at capture.

    Args:
        model: a :class:`dadf_fast.DADF` on a CUDA device.
        batch_size: the one batch size the graph serves (pad the last batch).
        warmup: eager calls on a side stream before capture (Triton autotuning, cuDNN
            algorithm choice and the allocator's pool must settle before recording).
    """

    def __init__(self, model, batch_size: int, warmup: int = 3):
        device = next(model.parameters()).device
        if device.type != "cuda":
            raise ValueError(f"CUDAGraphInference needs a model on a CUDA device, got {device}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.model, self.batch_size = model.eval(), batch_size
        s = model.input_size
        self.static_images = torch.zeros(batch_size, 3, s, s, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(max(1, warmup)):
                self._run()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self.static_out = self._run()

    def _run(self):
        # no input checks in the graph: they read the data on the host (a sync); they run on
        # the caller's tensor in __call__ instead
        with self.model.autocast("cuda"):
            return self.model._forward(self.static_images, None, None)

    def __call__(self, images: torch.Tensor) -> dict:
        self.model.check_images(images)
        if images.shape[0] != self.batch_size:
            raise ValueError(f"images must be a batch of {self.batch_size} (the captured batch size), "
                             f"got {images.shape[0]}")
        self.static_images.copy_(images)
        self.graph.replay()
        # no finiteness check here (unlike predict): it would cost a host sync per replay, the
        # one thing a graph is for avoiding; check_finite_output(out, ...) is there to call
        return {k: v.clone() for k, v in self.static_out.items()}


__all__ = ["CUDAGraphInference"]
