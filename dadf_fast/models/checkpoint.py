"""Reading checkpoint files safely, with one-line errors that name the file.

dadf-fast writes checkpoints with ``torch.save`` (a zip archive) and reads them with
``torch.load(weights_only=True)``, so no code in a file ever runs.  torch's own messages
for files it will not load suggest ``weights_only=False`` (unpickling, i.e. running
whatever the file holds): that advice must never reach a user holding an untrusted file,
so its errors are translated here instead of passed on.
"""
from __future__ import annotations

import os
import pickle

import torch

_ZIP_MAGIC = b"PK\x03\x04"
_ZIP_END = b"PK\x05\x06"     # end-of-central-directory record: last in a complete zip archive
_ZIP_END_SEARCH = 65536 + 22  # the record sits within the archive's last 64 KiB + 22 bytes


class CheckpointError(ValueError):
    """A file is not a usable dadf-fast checkpoint (corrupt, truncated, foreign, damaged)."""


def _ends_complete(tail: bytes) -> bool:
    """Whether ``tail`` (the file's last bytes) ends exactly with a zip end-of-central-directory
    record and its comment, as a complete archive does (a cut file ends elsewhere)."""
    at = tail.rfind(_ZIP_END)
    if at < 0 or at + 22 > len(tail):
        return False
    comment_len = int.from_bytes(tail[at + 20:at + 22], "little")
    return at + 22 + comment_len == len(tail)


def read_checkpoint_file(path) -> object:
    """``torch.load(path, weights_only=True)`` on CPU, with clear errors for a missing
    path, a directory, an empty, truncated or corrupt file and a foreign pickle."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"checkpoint {path!r} is a directory, not a checkpoint file "
                                f"(e.g. {os.path.join(path, 'model.pt')!r})")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path!r}")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"checkpoint {path!r} is empty (0 bytes): an interrupted copy or download?")
    with open(path, "rb") as f:
        head = f.read(len(_ZIP_MAGIC))
        f.seek(max(0, size - _ZIP_END_SEARCH))
        tail = f.read()
    if head != _ZIP_MAGIC:
        raise CheckpointError(f"checkpoint {path!r} is not a dadf-fast checkpoint "
                              "(not a zip archive as torch.save writes)")
    if not _ends_complete(tail):
        raise CheckpointError(f"checkpoint {path!r} is truncated ({size} bytes, the end of its archive is missing): "
                              "an interrupted copy or download?")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"checkpoint {path!r} is not a dadf-fast checkpoint: it holds Python objects other than tensors and "
            "plain containers, which dadf-fast never unpickles (that would run code from the file)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError/EOFError/KeyError/... for damaged archives
        raise CheckpointError(f"checkpoint {path!r} is corrupt or not a torch checkpoint "
                              f"({type(exc).__name__} while reading it)") from exc


def first_nonfinite(tensors: dict):
    """Name of the first floating-point tensor of ``tensors`` holding NaN or Inf, or None."""
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()):
            if not bool(torch.isfinite(t).all()):
                return name
    return None


def state_dict_mismatch(own: dict, given) -> str | None:
    """One line saying how the state dict ``given`` fails to fit a module whose state dict
    is ``own`` (missing, unexpected and mis-shaped entries, first of each), or None."""
    if not isinstance(given, dict):
        return f"it is a {type(given).__name__}, not a dict of tensors"
    missing = [k for k in own if k not in given]
    unexpected = [k for k in given if k not in own]
    wrong = [k for k in own
             if k in given and (not isinstance(given[k], torch.Tensor) or given[k].shape != own[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors missing (first {missing[0]!r})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first {unexpected[0]!r})")
    if wrong:
        k, v = wrong[0], given[wrong[0]]
        got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        parts.append(f"{len(wrong)} mis-shaped (first {k!r}: {got} in the file, {tuple(own[k].shape)} expected)")
    return "; ".join(parts) or None


def check_payload(payload, path: str, fmt_expected: str, version: int) -> None:
    """Raise one line unless ``payload`` (a loaded file) is a checkpoint of format
    ``fmt_expected`` and ``version`` holding a ``config`` and a ``state_dict``."""
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if fmt != fmt_expected:
        what = f"its format is {fmt!r}" if fmt is not None else "it has no 'format' entry"
        hint = "; dadf_fast.models.knn.load_detector opens every detector checkpoint" if isinstance(fmt, str) else ""
        raise CheckpointError(f"checkpoint {path!r} is not a dadf-fast checkpoint ({what}, expected "
                              f"{fmt_expected!r}){hint}")
    if payload.get("version") != version:
        raise CheckpointError(f"checkpoint {path!r} has version {payload.get('version')!r}; this dadf-fast reads "
                              f"{version}")
    if not isinstance(payload.get("config"), dict) or not isinstance(payload.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {path!r} is missing its config or state_dict")
