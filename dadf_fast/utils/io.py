"""Safe output files.

* Atomic writes: a temporary file in the target folder, fsync, then ``os.replace``, so an
  interrupted write never leaves a truncated file under the final name.  New files get the
  usual permissions (``0o666 & ~umask``); a replaced file keeps its mode.
* Output folders (:func:`prepare_output_dir`): checked before any work starts (not a file,
  creatable, writable), refused when they already hold files unless the caller says
  ``overwrite`` (or ``resume``), and locked against a second concurrent run.
* Inputs are never overwritten: while :func:`protect_inputs` is active, every atomic write
  whose target is one of the protected files raises :class:`OutputPathError`.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat

LOCK_NAME = ".dadf-fast.lock"

try:  # POSIX: an advisory lock the kernel drops when its process dies, so no lock goes stale
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


class OutputPathError(ValueError):
    """An output path that cannot be used safely (the message names it and says why)."""


class OutputInUseError(OutputPathError):
    """Another running process holds the output folder's lock."""


# ----------------------------------------------------------------------------- protected inputs
_PROTECTED: list[dict] = []  # stack of {(st_dev, st_ino): path} of the active protect_inputs blocks


def _file_key(path):
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


@contextlib.contextmanager
def protect_inputs(paths):
    """Within the block, :func:`atomic_open` refuses to replace any of ``paths`` (compared by
    file identity, so another spelling, a symlink or a case variant of the name is caught too)."""
    keys = {}
    for p in paths:
        if p is None:
            continue
        key = _file_key(os.fspath(p))
        if key is not None:
            keys[key] = os.fspath(p)
    _PROTECTED.append(keys)
    try:
        yield
    finally:
        _PROTECTED.remove(keys)


def check_not_input(path, inputs=None) -> None:
    """Raise :class:`OutputPathError` when ``path`` is one of ``inputs`` or of the files under
    :func:`protect_inputs`."""
    key = _file_key(os.fspath(path))
    if key is None:
        return
    extra = {}
    for p in inputs or ():
        k = _file_key(os.fspath(p))
        if k is not None:
            extra[k] = os.fspath(p)
    for table in [extra, *_PROTECTED]:
        if key in table:
            same = "" if os.path.abspath(table[key]) == os.path.abspath(os.fspath(path)) else f" ({table[key]})"
            raise OutputPathError(f"refusing to write {os.fspath(path)}: it is an input file{same}; "
                                  "choose an output folder apart from the inputs")


# ----------------------------------------------------------------------------- atomic writes
def _open_temp(folder: str, base: str) -> tuple[int, str]:
    """A new file next to the target, opened O_EXCL (so never someone else's)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = os.path.join(folder, f".{base}.{secrets.token_hex(4)}.tmp")
        try:
            # 0o666: the kernel applies the umask, as for any new file (mkstemp would give 0o600)
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"could not create a temporary file next to {base} in {folder}")


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb"):
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success.

    Refuses (:class:`OutputPathError`) a ``path`` that is a folder or a protected input file.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise OutputPathError(f"cannot write {path}: it is a folder")
    check_not_input(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = _open_temp(folder, os.path.basename(path))
    try:
        try:
            st = os.stat(path)
            if stat.S_ISREG(st.st_mode):  # replacing a file: keep its permissions
                os.chmod(tmp, stat.S_IMODE(st.st_mode))
        except (FileNotFoundError, NotADirectoryError):
            pass
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


# ----------------------------------------------------------------------------- output folders
def _flags(what: str) -> tuple[str, str]:
    """How the caller spells the two permissions: CLI flags or keyword arguments."""
    return ("--overwrite", "--resume") if what.startswith("--") else ("overwrite=True", "resume=True")


class _Lock:
    """The lock file of one output folder, held by this process (re-entrant: a command that
    locked ``--out`` can call a library function that locks the same folder)."""

    held: dict = {}  # realpath of the folder -> [fd, count]

    def __init__(self, folder: str, what: str):
        self.key = os.path.realpath(folder)
        self.path = os.path.join(folder, LOCK_NAME)
        self.what = what

    def acquire(self) -> None:
        entry = _Lock.held.get(self.key)
        if entry is not None:
            entry[1] += 1
            return
        fd = self._lock_posix() if fcntl is not None else self._lock_excl()
        _Lock.held[self.key] = [fd, 1]

    def _in_use(self) -> OutputInUseError:
        try:
            with open(self.path) as f:
                pid = f.read().strip() or "?"
        except OSError:
            pid = "?"
        return OutputInUseError(f"{self.what} {os.path.dirname(self.path) or '.'} is in use by another dadf-fast run "
                                f"(pid {pid}, lock file {self.path}); wait for it to end or choose another folder")

    def _lock_posix(self) -> int:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise self._in_use() from None
                raise
            # the holder we waited on may have removed the file after we opened it: then
            # our lock is on a dead inode, so try again on the current file
            if _file_key(self.path) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return fd
            os.close(fd)

    def _lock_excl(self) -> int:  # pragma: no cover - Windows: no flock, no stale-lock check
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            err = self._in_use()
            raise OutputInUseError(f"{err}; if no run is going on, delete the lock file") from None
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    def release(self) -> None:
        entry = _Lock.held.get(self.key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1]:
            return
        del _Lock.held[self.key]
        with contextlib.suppress(OSError):  # unlink before close: nobody can lock a dead inode then
            os.unlink(self.path)
        os.close(entry[0])


class OutputDir(contextlib.AbstractContextManager):
    """A prepared output folder (see :func:`prepare_output_dir`); leaving the ``with`` block
    releases its lock."""

    def __init__(self, path: str, lock: _Lock):
        self.path = path
        self._lock = lock

    def __fspath__(self) -> str:
        return self.path

    def close(self) -> None:
        self._lock.release()

    def __exit__(self, *exc) -> None:
        self.close()


def prepare_output_dir(path, *, overwrite: bool = False, resume: bool | None = None,
                       what: str = "--out") -> OutputDir:
    """Make ``path`` ready to receive a run's outputs, before any work is done.

    Refuses (:class:`OutputPathError`, message naming ``what``) a path that is an existing
    file, cannot be created or is not writable, and a folder that already holds files unless
    ``overwrite`` or ``resume`` is true (``resume=None``: the caller cannot resume, its
    error message does not offer it).  Creates the folder and locks it (a lock file held
    for the life of the returned :class:`OutputDir`; a second run on the folder gets
    :class:`OutputInUseError`).  Use as ``with prepare_output_dir(out) as d: ...``.
    """
    if path is None or not os.fspath(path):
        raise OutputPathError(f"{what} must be a folder path, got {path!r}")
    path = os.fspath(path)
    over, res = _flags(what)
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputPathError(f"{what} {path} is an existing file, not a folder; give a folder path")
    created = not os.path.exists(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"{what} {path} cannot be created: {exc.strerror or exc}") from None
    lock = _Lock(path, what)

    def refuse_if_full():
        if overwrite or resume:
            return
        held = sorted(n for n in os.listdir(path) if n != LOCK_NAME)
        if held:
            shown = ", ".join(held[:3]) + (f", ... ({len(held)} entries)" if len(held) > 3 else "")
            allow = f"{over} to replace its files" + (f" or {res} to continue its run" if resume is not None else "")
            raise OutputPathError(f"{what} {path} already holds files ({shown}); choose a new folder, or pass {allow}")

    try:
        # refuse a full folder before writing anything into it (not even the lock file) ...
        refuse_if_full()
    except OutputPathError:
        if os.path.exists(os.path.join(path, LOCK_NAME)) and os.path.realpath(path) not in _Lock.held:
            with contextlib.suppress(OSError):
                lock.acquire()  # raises OutputInUseError when a live run holds it: the better message
                lock.release()
        raise
    try:
        lock.acquire()
        fd, probe = _open_temp(path, "probe")  # the lock file may predate a chmod: probe anew
        os.close(fd)
        os.unlink(probe)
    except OutputPathError:
        raise
    except OSError as exc:
        lock.release()
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(path)
        raise OutputPathError(f"{what} {path} is not writable: {exc.strerror or exc}") from None
    try:
        refuse_if_full()  # ... and again under the lock, in case a run started meanwhile
    except BaseException:
        lock.release()
        raise
    return OutputDir(path, lock)


def prepare_output_file(path, *, overwrite: bool = False, what: str = "--csv") -> str:
    """Check, before any work, that ``path`` can be written: not a folder, not an existing
    file unless ``overwrite``, its folder creatable and writable (a probe file is created and
    removed).  Returns ``path``."""
    if path is None or not os.fspath(path):
        raise OutputPathError(f"{what} must be a file path, got {path!r}")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise OutputPathError(f"{what} {path} is a folder; give a file path")
    if os.path.exists(path) and not overwrite:
        raise OutputPathError(f"{what} {path} already exists; choose a new file name or pass {_flags(what)[0]}")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = _open_temp(folder, os.path.basename(path))
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputPathError(f"{what} {path}: its folder {folder} is not writable: {exc.strerror or exc}") from None
    return path


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
