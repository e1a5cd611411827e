"""``accelerate(model)``: FrEIA 0.2 ``AllInOneBlock``s replaced in place by dadf-fast's block.

A FrEIA model holds its blocks in up to two places at once: ``SequenceINN.module_list``
(an ``nn.ModuleList``), or ``GraphINN.module_list`` *and* ``node.module`` of each node in
``GraphINN.node_list`` (a plain list the graph's forward walks).  Every one of those
references is pointed at the new block, or the graph would keep running the old one.

Which blocks are FrEIA-0.2 blocks:

* by class identity: ``FrEIA.modules.AllInOneBlock`` and anomalib's vendored
  ``anomalib.models.components.flow.AllInOneBlock`` (the same code, FrEIA 0.2's semantics),
  looked up in ``sys.modules`` only (a model holding one has imported its module);
* their subclasses;
* by duck typing: any other class named ``AllInOneBlock``, or any module with FrEIA 0.2's
  attributes (the same code under another class object, e.g. a reloaded module, or another
  vendored copy).

Each block found is converted by :meth:`dadf_fast.nn.AllInOneBlock.from_freia`, unless
:meth:`~dadf_fast.nn.AllInOneBlock.unsupported_reason` refuses it (overridden or unknown
methods, an option the chosen backend cannot run, ...) or it has hooks registered (the new
block would not carry them): then it is left as it is and named in the report with the reason.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch.nn as nn

from dadf_fast.kernels.registry import BACKEND_NAMES
from dadf_fast.nn.all_in_one import AllInOneBlock

# (module, class name) of the known FrEIA-0.2-semantics blocks
_KNOWN_BLOCKS = (
    ("FrEIA.modules.all_in_one_block", "AllInOneBlock"),
    ("anomalib.models.components.flow.all_in_one_block", "AllInOneBlock"),
)
# what makes a module of another class look like a FrEIA 0.2 block (duck typing)
_FREIA_ATTRIBUTES = ("splits", "clamp", "GIN", "householder", "reverse_pre_permute", "global_scale",
                     "global_offset", "global_scale_activation", "subnet")


@dataclass
class AccelerationReport:
    """What :func:`accelerate` did.

    Attributes:
        replaced: module paths (``model.get_submodule(path)``) of the blocks now fast.
        left: ``(path, reason)`` of the FrEIA blocks left as they were.
        already_fast: paths of blocks that were dadf-fast blocks before the call.
        backend: the backend the new blocks were given.

    ``bool(report)`` is True when the model now runs every one of its ``AllInOneBlock``\\ s on
    dadf-fast (at least one, none left): True again on a second call, False for a model with
    no flow block or with a block left.
    """

    replaced: list[str] = field(default_factory=list)
    left: list[tuple[str, str]] = field(default_factory=list)
    already_fast: list[str] = field(default_factory=list)
    backend: str = "auto"

    def __bool__(self) -> bool:
        return not self.left and bool(self.replaced or self.already_fast)

    def __str__(self) -> str:
        if not (self.replaced or self.left or self.already_fast):
            return "accelerate: the model has no FrEIA AllInOneBlock (nothing replaced)"
        lines = [f"accelerate (backend={self.backend!r}): {len(self.replaced)} replaced, {len(self.left)} left, "
                 f"{len(self.already_fast)} already fast"]
        lines += [f"  replaced      {_show(p)}" for p in self.replaced]
        lines += [f"  left          {_show(p)}: {reason}" for p, reason in self.left]
        lines += [f"  already fast  {_show(p)}" for p in self.already_fast]
        return "\n".join(lines)


def _show(path: str) -> str:
    return path or "<the model itself>"


def _known_classes() -> list[type]:
    found = []
    for module_name, class_name in _KNOWN_BLOCKS:
        cls = getattr(sys.modules.get(module_name), class_name, None)
        if isinstance(cls, type):
            found.append(cls)
    return found


def _is_freia_block(module: nn.Module, known: list[type]) -> bool:
    """Whether ``module`` is (or looks like) a FrEIA 0.2 ``AllInOneBlock``: an instance of a
    known class (subclasses included), a class named ``AllInOneBlock``, or a module with every
    FrEIA 0.2 attribute.  Whether it can be converted is :meth:`AllInOneBlock.unsupported_reason`'s
    call (it refuses overridden methods and code it does not know)."""
    if isinstance(module, tuple(known)) or type(module).__name__ == "AllInOneBlock":
        return True
    return all(hasattr(module, a) for a in _FREIA_ATTRIBUTES)


def _hooks_reason(module: nn.Module) -> str | None:
    """A block with hooks is left: the new block would silently not run them."""
    kinds = {"forward": module._forward_hooks, "forward pre-": module._forward_pre_hooks,
             "backward": module._backward_hooks, "backward pre-": module._backward_pre_hooks}
    held = [f"{len(h)} {kind}{'' if kind.endswith('-') else ' '}hook(s)" for kind, h in kinds.items() if h]
    if held:
        return f"has {', '.join(held)} registered; a new block would not carry them"
    return None


def accelerate(model: nn.Module, backend: str = "auto") -> AccelerationReport:
    """Replace, in place, every FrEIA-0.2-semantics ``AllInOneBlock`` of ``model`` by
    :class:`dadf_fast.nn.AllInOneBlock` with the same parameters, buffers and function.

    Args:
        model: any ``nn.Module`` (an anomalib ``FastflowModel``, ``CflowModel``, ``UflowModel``,
            ``PatchflowModel``, a FrEIA ``SequenceINN``/``GraphINN``, a plain container, ...).
        backend: ``"auto"`` or a backend name, given to every new block (which raises at call
            time, with the reason, when that backend cannot run its inputs).

    Returns:
        An :class:`AccelerationReport`.  ``model.state_dict()`` keeps its keys; blocks that are
        already dadf-fast blocks are left alone (a second call replaces nothing); a block with
        an option dadf-fast does not run is left as it is and named with the reason.  The
        model itself cannot be replaced in place: if ``model`` is a block, it is reported as
        left (use ``AllInOneBlock.from_freia``).  The new blocks hold the original blocks'
        parameter tensors and subnets (not copies): an optimizer built before the call keeps
        training the model.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"accelerate: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(backend, str) or backend not in ("auto",) + BACKEND_NAMES:
        raise ValueError(f"accelerate: backend must be one of {('auto',) + BACKEND_NAMES}, got {backend!r}")
    known = _known_classes()
    report = AccelerationReport(backend=backend)
    new_for: dict[int, nn.Module] = {}
    done: list[str] = []  # paths of blocks handled: their subtrees (subnets) are not searched
    for path, module in model.named_modules():  # a block held in two places is visited once
        if any(p == "" or path.startswith(p + ".") for p in done):
            continue
        if isinstance(module, AllInOneBlock):
            done.append(path)
            report.already_fast.append(path)
            continue
        if not _is_freia_block(module, known):
            continue
        done.append(path)
        reason = _hooks_reason(module) or AllInOneBlock.unsupported_reason(module, backend)
        if reason is None and module is model:
            reason = "the model itself is the block and cannot be replaced in place: use AllInOneBlock.from_freia"
        if reason is not None:
            report.left.append((path, reason))
            continue
        fast = AllInOneBlock.from_freia(module, backend=backend)
        fast.train(module.training)
        new_for[id(module)] = fast
        report.replaced.append(path)
    if new_for:
        _rewire(model, new_for)
    return report


def _rewire(model: nn.Module, new_for: dict[int, nn.Module]) -> None:
    """Point every reference the model holds to a replaced block at its new block: submodule
    slots (``SequenceINN.module_list``, ``GraphINN.module_list``, plain attributes) and the
    ``module`` of every node of a ``GraphINN.node_list``."""
    for parent in list(model.modules()):
        # _modules, not named_children(): the latter skips a block registered twice in one parent
        for name, child in list(parent._modules.items()):
            if child is not None and id(child) in new_for:
                parent.register_module(name, new_for[id(child)])
        nodes = getattr(parent, "node_list", None)
        if isinstance(nodes, (list, tuple)):
            for node in nodes:
                if id(getattr(node, "module", None)) in new_for:
                    node.module = new_for[id(node.module)]
