"""Just-in-time build of the C++/CUDA extension into a per-configuration cache directory.

The extension is compiled on first use (``torch.utils.cpp_extension.load``, ninja, ``MAX_JOBS``
respected) into ``<cache root>/<key>``, where the key names everything the binary depends on:
the hash of ``csrc/``, the compile flags, the torch version, the Python ABI and the CUDA
configuration.  A later process with the same key loads the cached library without running
ninja or the compiler; a changed source, flag or torch gives a new key and a new directory,
so a library built from other sources can never be loaded.

Environment variables:

* ``DADF_FAST_EXT_DIR``     cache root (default ``$XDG_CACHE_HOME/dadf_fast``, i.e.
  ``~/.cache/dadf_fast``); one sub-directory per key.
* ``DADF_FAST_CUDA``        ``1`` compiles the CUDA kernels (``csrc/cuda``) even without a
  visible GPU, ``0`` never; unset: when a GPU is visible and nvcc is found.
* ``TORCH_CUDA_ARCH_LIST``  the CUDA architectures (part of the key); torch's default (the
  visible GPUs) when unset.
* ``DADF_FAST_NO_EXT``      ``1`` disables the ``cpp`` backend (nothing is compiled or loaded).
* ``MAX_JOBS``              parallel compile jobs (read by torch).

``python -m dadf_fast.kernels.cpp.build`` compiles (or finds) the extension now and prints
where it is and how long it took.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass

import torch

from dadf_fast.kernels.cpp.source_hash import source_hash

CPP_DIR = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(CPP_DIR, "csrc")
EXTENSION_NAME = "_C"  # csrc/ops.cpp defines PyInit__C
MODULE_NAME = "dadf_fast._C"
DONE_FILE = "build.json"  # written (atomically) after a successful compile and import
LOG_FILE = "build.log"

# No -ffast-math: the kernels rely on IEEE rounding (exp range reduction) and must match the
# reference to float rounding.  -fopenmp: at::parallel_for is OpenMP-backed in the headers
# and the inner loops use `omp simd`.  The C++ standard is left to torch (its headers' own).
CXX_FLAGS = ("-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math")
LD_FLAGS = ("-fopenmp",)
NVCC_FLAGS = ("-O3", "--expt-relaxed-constexpr")


def _flag(name: str) -> bool | None:
    """True/False for a set boolean environment variable, None when unset or empty."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return None
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be 0 or 1, got {os.environ[name]!r}")


def disabled_reason() -> str | None:
    """The reason string when ``DADF_FAST_NO_EXT`` disables the extension, else None."""
    if _flag("DADF_FAST_NO_EXT"):
        return "the cpp backend is disabled by DADF_FAST_NO_EXT=1"
    return None


def cuda_choice() -> tuple[bool, str]:
    """(compile the CUDA kernels?, why) from ``DADF_FAST_CUDA``, the GPUs and nvcc."""
    forced = _flag("DADF_FAST_CUDA")
    if forced is False:
        return False, "DADF_FAST_CUDA=0"
    if forced:
        return True, "DADF_FAST_CUDA=1"
    if not torch.cuda.is_available():
        return False, "no CUDA device was visible when it was built"
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None or not os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        return False, "nvcc was not found (set CUDA_HOME)"
    return True, "a CUDA device is visible and nvcc was found"


def cuda_archs() -> str:
    """The CUDA architectures the build targets: TORCH_CUDA_ARCH_LIST, else the visible GPUs'."""
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if archs:
        return archs
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{major}.{minor}" for major, minor in caps)
    return "default"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in text)


def cache_key(src_hash: str, torch_version: str, python_tag: str, cuda: str | None) -> str:
    """Directory name for one build configuration.

    ``src_hash``: :func:`source_hash` of csrc/; ``torch_version``: ``torch.__version__``;
    ``python_tag``: ``sys.implementation.cache_tag`` (e.g. ``cpython-311``); ``cuda``: None
    for a CPU-only build, else the CUDA architecture list.  The compile flags of this module
    enter through a short digest, so changing them also gives a new directory.
    """
    flags = hashlib.sha256(repr((CXX_FLAGS, LD_FLAGS, NVCC_FLAGS)).encode()).hexdigest()[:8]
    variant = "cpu" if cuda is None else "cuda" + _slug(cuda.replace(";", "_").replace(" ", "_"))
    return f"{src_hash}-f{flags}-torch{_slug(torch_version)}-{_slug(python_tag)}-{variant}"


def cache_root() -> str:
    """``DADF_FAST_EXT_DIR``, else ``$XDG_CACHE_HOME/dadf_fast`` (``~/.cache/dadf_fast``)."""
    root = os.environ.get("DADF_FAST_EXT_DIR", "").strip()
    if root:
        return os.path.abspath(os.path.expanduser(root))
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip() or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "dadf_fast")


@dataclass(frozen=True)
class BuildPlan:
    """What :func:`load` builds: the sources, the CUDA choice and the cache directory."""

    csrc: str
    src_hash: str
    with_cuda: bool
    cuda_why: str
    directory: str

    @property
    def library(self) -> str:
        return os.path.join(self.directory, EXTENSION_NAME + ".so")

    @property
    def log(self) -> str:
        return os.path.join(self.directory, LOG_FILE)

    @property
    def cached(self) -> bool:
        """True when a completed build of this configuration is in the cache."""
        return os.path.exists(os.path.join(self.directory, DONE_FILE)) and os.path.exists(self.library)


def plan(csrc: str = CSRC) -> BuildPlan:
    """The build this process needs for the sources in ``csrc`` (the package's by default;
    raises FileNotFoundError when the directory is missing)."""
    src_hash = source_hash(os.path.dirname(os.path.abspath(csrc)))
    if src_hash is None:
        raise FileNotFoundError(f"the C++ sources are missing: no directory {csrc}")
    with_cuda, why = cuda_choice()
    key = cache_key(src_hash, torch.__version__, sys.implementation.cache_tag, cuda_archs() if with_cuda else None)
    return BuildPlan(os.path.abspath(csrc), src_hash, with_cuda, why, os.path.join(cache_root(), key))


def _sources(csrc: str, with_cuda: bool) -> list[str]:
    """ops.cpp, cpu/*.cpp and, with CUDA, cuda/*.cu under ``csrc``."""
    def listing(sub, ext):
        folder = os.path.join(csrc, sub)
        return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(ext)) \
            if os.path.isdir(folder) else []

    return [os.path.join(csrc, "ops.cpp")] + listing("cpu", ".cpp") + (listing("cuda", ".cu") if with_cuda else [])


@contextlib.contextmanager
def _ninja_on_path():
    """Put the ``ninja`` package's binary on PATH when no ninja is (a venv used without
    activating it has its scripts directory off PATH); torch runs ``ninja`` by name."""
    if shutil.which("ninja") is not None:
        yield
        return
    old = os.environ.get("PATH", "")
    try:
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + old
    except ImportError:
        pass  # torch's own error ("Ninja is required ...") then names the problem
    try:
        yield
    finally:
        os.environ["PATH"] = old


def compile_library(p: BuildPlan) -> float:
    """Compile and link ``p.library`` (ninja in ``p.directory``, under torch's file lock, so
    concurrent first uses build once).  Returns seconds; raises RuntimeError with the compiler
    output on failure, after writing it to ``p.log``."""
    from torch.utils import cpp_extension

    os.makedirs(p.directory, exist_ok=True)
    defines = [f"-DDADF_FAST_SOURCE_HASH={p.src_hash}"] + (["-DDADF_FAST_WITH_CUDA"] if p.with_cuda else [])
    start = time.perf_counter()
    try:
        with _ninja_on_path():
            built = cpp_extension.load(
                name=EXTENSION_NAME,
                sources=_sources(p.csrc, p.with_cuda),
                extra_cflags=list(CXX_FLAGS) + defines,
                extra_cuda_cflags=list(NVCC_FLAGS) + defines,
                extra_ldflags=list(LD_FLAGS),
                extra_include_paths=[p.csrc],
                build_directory=p.directory,
                with_cuda=p.with_cuda,
                is_python_module=False,  # registers the ops; import_library() makes the module
                verbose=False,
            )
    except Exception as exc:
        _write_atomic(p.log, f"{type(exc).__name__}: {exc}\n")
        raise
    seconds = time.perf_counter() - start
    if os.path.realpath(built) != os.path.realpath(p.library):
        # torch renames a second load() of the same name with other sources in one process
        raise RuntimeError(f"torch built {built}, expected {p.library}: the extension was already built "
                           "from other sources in this process")
    # a process that waited for a concurrent build of the same key also gets here (ninja: no work)
    _write_atomic(p.log, f"build step done in {seconds:.1f} s\n")
    return seconds


def import_library(p: BuildPlan):
    """Import ``p.library`` as the module ``dadf_fast._C`` (registered in sys.modules)."""
    spec = importlib.util.spec_from_file_location(MODULE_NAME, p.library)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules[MODULE_NAME] = mod
    return mod


def mark_done(p: BuildPlan, seconds: float) -> None:
    info = {"source_hash": p.src_hash, "torch": torch.__version__, "python": sys.implementation.cache_tag,
            "with_cuda": p.with_cuda, "cuda_archs": cuda_archs() if p.with_cuda else None,
            "compile_seconds": round(seconds, 1)}
    _write_atomic(os.path.join(p.directory, DONE_FILE), json.dumps(info, indent=1) + "\n")


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


_DIAGNOSTIC = re.compile(r"error|not found|fatal|undefined|no such|permission denied|required", re.IGNORECASE)


def _diagnostics(text: str) -> list[str]:
    """The compiler's and the shell's complaints in a ninja log, without the echoed commands
    (which are long and contain "error" only in file names)."""
    seen, found = set(), []
    for raw in text.splitlines():
        line = raw.strip()
        if (not line or len(line) > 400 or re.match(r"\[\d+/\d+\]", line) or line.startswith("FAILED:")
                or "Error building extension" in line or not _DIAGNOSTIC.search(line) or line in seen):
            continue
        seen.add(line)
        found.append(line)
    return found


def failure_reason(exc: BaseException, p: BuildPlan | None) -> str:
    """A one-paragraph reason for backends(): the first compiler error lines and the log path."""
    text = str(exc)
    errors = _diagnostics(text)
    head = "; ".join(errors[:3]) if errors else " ".join(text.split())[:300]
    where = f" (full log: {p.log})" if p is not None and os.path.exists(p.log) else ""
    return f"the C++ extension failed to build ({type(exc).__name__}: {head}){where}"


def load(csrc: str = CSRC, announce: bool = True):
    """``(module, plan, compile seconds or None when cached)`` for the sources in ``csrc``,
    compiling first when this configuration is not in the cache.

    Raises whatever the compile or the import raises (:func:`load_extension` turns it into a
    reason string).  ``announce`` prints one line on stderr before compiling.
    """
    p = plan(csrc)
    if p.cached:
        return import_library(p), p, None
    if announce:
        print(f"dadf-fast: compiling the C++ extension (first use, cached in {p.directory})", file=sys.stderr,
              flush=True)
    seconds = compile_library(p)
    mod = import_library(p)
    mark_done(p, seconds)
    return mod, p, seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dadf_fast.kernels.cpp.build",
        description="Compile the C++/CUDA extension into its cache now (or find it there) and print where it is.")
    parser.parse_args(argv)
    reason = disabled_reason()
    if reason:
        print(f"dadf-fast: {reason}", file=sys.stderr)
        return 1
    p = plan()
    how = "loaded from the cache" if p.cached else "compiled"
    start = time.perf_counter()
    try:
        mod, p, _ = load()
    except Exception as exc:
        print(f"dadf-fast: {failure_reason(exc, p)}", file=sys.stderr)
        return 1
    print(f"dadf-fast: C++ extension {mod.__file__} {how} in {time.perf_counter() - start:.2f} s "
          f"(WITH_CUDA={mod.WITH_CUDA}: {p.cuda_why}; SOURCE_HASH={mod.SOURCE_HASH})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
