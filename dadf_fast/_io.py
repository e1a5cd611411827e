"""Atomic file writes: a temporary file in the target folder, fsync, then ``os.replace``, so
an interrupted write never leaves a truncated file under the final name."""
from __future__ import annotations

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb"):
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj, path) -> None:
    import torch

    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def atomic_write_text(path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)



def unique_output_stems(paths) -> list[str]:
    """One output file stem per input path, never two alike (compared case-insensitively,
    for case-insensitive file systems).

    The stem is the input's file stem (``a.png`` -> ``a``, as the MVTec evaluation layout
    expects). When inputs share a stem but not an extension, each of them gets its
    extension appended (``a.png`` -> ``a_png``, ``a.jpg`` -> ``a_jpg``); names that still
    collide (the same file name in two folders) keep the first as it is and give the
    others ``_1``, ``_2``, ... in input order, skipping names already taken. The result
    depends only on the list of paths, so a rerun names the same files the same way.
    """
    names = [os.path.basename(os.fspath(p)) for p in paths]
    split = [os.path.splitext(n) for n in names]
    exts_of: dict[str, set] = {}
    for stem, ext in split:
        exts_of.setdefault(stem.lower(), set()).add(ext.lower())
    first = [f"{stem}_{ext.lstrip('.')}" if len(exts_of[stem.lower()]) > 1 and ext else stem
             for stem, ext in split]
    taken = {s.lower() for s in first}
    used: set = set()
    out = []
    for s in first:
        name = s
        if name.lower() in used:
            k = 1
            while f"{s}_{k}".lower() in taken:
                k += 1
            name = f"{s}_{k}"
            taken.add(name.lower())
        used.add(name.lower())
        out.append(name)
    return out
