"""The JIT build of the C++ extension (dadf_fast/kernels/cpp/build.py): cache keys, the cache
reused across processes, concurrent first uses, failures as reasons, and (under CI) proof that
the loaded extension is the JIT-built one for the current sources.

The build-machinery tests compile a tiny stand-in ``csrc/`` (one C file without torch
headers, well under a second) in a temporary cache directory, so they exercise the real
torch/ninja path without the minutes the real kernels take.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

import dadf_fast
from dadf_fast.kernels.cpp import build, load_extension
from dadf_fast.kernels.cpp.source_hash import source_hash

# the package under test, checkout or installed wheel; subprocesses import the same one
PACKAGE_DIR = os.path.dirname(os.path.abspath(dadf_fast.__file__))
IMPORT_ROOT = os.path.dirname(PACKAGE_DIR)

# A stand-in ops.cpp: the same module entry point and exports as the real one, no torch.
TINY_OPS_CPP = textwrap.dedent("""\
    #include <Python.h>
    #define STR_(x) #x
    #define STR(x) STR_(x)
    static PyModuleDef tiny = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
    PyMODINIT_FUNC PyInit__C(void) {
      PyObject* mod = PyModule_Create(&tiny);
      if (mod == nullptr) return nullptr;
      PyModule_AddStringConstant(mod, "SOURCE_HASH", STR(DADF_FAST_SOURCE_HASH));
      Py_INCREF(Py_False);
      PyModule_AddObject(mod, "WITH_CUDA", Py_False);
      return mod;
    }
""")

# Run in a subprocess: build.load() on a given csrc/, print what it returned as JSON.
LOAD_SCRIPT = textwrap.dedent("""\
    import json, sys
    from dadf_fast.kernels.cpp import build
    mod, plan, seconds = build.load(sys.argv[1])
    print(json.dumps({"file": mod.__file__, "hash": mod.SOURCE_HASH, "seconds": seconds}))
""")


def _tiny_csrc(tmp_path, body=TINY_OPS_CPP):
    csrc = tmp_path / "src" / "csrc"
    (csrc / "cpu").mkdir(parents=True)
    (csrc / "ops.cpp").write_text(body)
    return str(csrc)


def _env(cache_dir=None, **extra):
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [IMPORT_ROOT, env.get("PYTHONPATH")]))
    if cache_dir is not None:
        env.update(DADF_FAST_EXT_DIR=str(cache_dir), DADF_FAST_CUDA="0", MAX_JOBS="1")
    env.pop("DADF_FAST_NO_EXT", None)
    return env


def _run_load(csrc, env):
    return subprocess.Popen([sys.executable, "-c", LOAD_SCRIPT, csrc], env=env, cwd=os.path.dirname(csrc),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1]), err


# ---------------------------------------------------------------------------------------
# cache key and plan
# ---------------------------------------------------------------------------------------


def test_cache_key_names_every_input():
    base = build.cache_key("0123456789abcdef", "2.14.1+cpu", "cpython-311", None)
    assert base.startswith("0123456789abcdef-")
    assert "torch2.14.1_cpu" in base and "cpython-311" in base and base.endswith("-cpu")
    variants = [
        build.cache_key("fedcba9876543210", "2.14.1+cpu", "cpython-311", None),  # sources
        build.cache_key("0123456789abcdef", "2.13.0+cpu", "cpython-311", None),  # torch
        build.cache_key("0123456789abcdef", "2.14.1+cpu", "cpython-312", None),  # python
        build.cache_key("0123456789abcdef", "2.14.1+cpu", "cpython-311", "9.0"),  # cuda
        build.cache_key("0123456789abcdef", "2.14.1+cpu", "cpython-311", "8.0;9.0"),  # archs
    ]
    assert len({base, *variants}) == 6
    assert variants[3].endswith("-cuda9.0") and variants[4].endswith("-cuda8.0_9.0")
    for key in [base, *variants]:
        assert os.sep not in key and " " not in key


def test_cache_key_changes_with_compile_flags(monkeypatch):
    before = build.cache_key("0123456789abcdef", "2.14.1", "cpython-311", None)
    monkeypatch.setattr(build, "CXX_FLAGS", build.CXX_FLAGS + ("-DEXTRA",))
    assert build.cache_key("0123456789abcdef", "2.14.1", "cpython-311", None) != before


def test_plan_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DADF_FAST_EXT_DIR", str(tmp_path))
    monkeypatch.setenv("DADF_FAST_CUDA", "0")
    p = build.plan()
    assert os.path.dirname(p.directory) == str(tmp_path)
    assert p.src_hash == source_hash() and p.with_cuda is False and p.directory.endswith("-cpu")
    assert os.path.basename(p.directory).startswith(source_hash() + "-")

    monkeypatch.setenv("DADF_FAST_CUDA", "1")
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    forced = build.plan()
    assert forced.with_cuda is True and forced.directory.endswith("-cuda8.0_9.0")

    monkeypatch.delenv("DADF_FAST_EXT_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert build.cache_root() == str(tmp_path / "xdg" / "dadf_fast")


def test_bad_flag_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("DADF_FAST_CUDA", "sometimes")
    with pytest.raises(ValueError, match="DADF_FAST_CUDA"):
        build.plan()
    monkeypatch.delenv("DADF_FAST_CUDA")
    monkeypatch.setenv("DADF_FAST_NO_EXT", "maybe")
    mod, reason = load_extension.__wrapped__()
    assert mod is None and "DADF_FAST_NO_EXT" in reason


def test_no_ext_disables_the_backend(monkeypatch):
    monkeypatch.setenv("DADF_FAST_NO_EXT", "1")
    mod, reason = load_extension.__wrapped__()
    assert mod is None
    assert reason == "the cpp backend is disabled by DADF_FAST_NO_EXT=1"


# ---------------------------------------------------------------------------------------
# the build machinery, on a tiny stand-in csrc/
# ---------------------------------------------------------------------------------------


def test_concurrent_first_uses_build_once_and_later_ones_reuse(tmp_path):
    csrc = _tiny_csrc(tmp_path)
    env = _env(tmp_path / "cache")
    first = [_run_load(csrc, env), _run_load(csrc, env)]
    results = [_finish(proc) for proc in first]
    (a, err_a), (b, err_b) = results
    expected_hash = source_hash(os.path.dirname(csrc))
    assert a["file"] == b["file"] and a["hash"] == b["hash"] == expected_hash
    assert os.path.dirname(a["file"]).startswith(str(tmp_path / "cache"))
    assert "dadf-fast: compiling the C++ extension (first use, cached in" in err_a + err_b
    # ninja's log has one line per target built: ops.o and _C.so once each, whoever built them
    log = os.path.join(os.path.dirname(a["file"]), ".ninja_log")
    with open(log) as f:
        targets = [line.split("\t")[3] for line in f if not line.startswith("#")]
    assert sorted(targets) == ["_C.so", "ops.o"], targets
    so_mtime = os.stat(a["file"]).st_mtime_ns

    again, err = _finish(_run_load(csrc, env))
    assert again == {"file": a["file"], "hash": expected_hash, "seconds": None}
    assert "compiling" not in err
    assert os.stat(a["file"]).st_mtime_ns == so_mtime


def test_changed_source_gets_a_new_directory(tmp_path):
    csrc = _tiny_csrc(tmp_path)
    env = _env(tmp_path / "cache")
    old, _ = _finish(_run_load(csrc, env))
    with open(os.path.join(csrc, "ops.cpp"), "a") as f:
        f.write("// changed\n")
    new, err = _finish(_run_load(csrc, env))
    assert new["seconds"] is not None and "compiling" in err
    assert new["hash"] == source_hash(os.path.dirname(csrc)) != old["hash"]
    assert os.path.dirname(new["file"]) != os.path.dirname(old["file"])


def test_failed_compile_is_a_reason_with_the_log(tmp_path):
    # in a subprocess: torch's JIT versioner remembers every load() of a name in a process
    csrc = _tiny_csrc(tmp_path, body="#error dadf_fast_test_broken_source\n")
    script = textwrap.dedent("""\
        import json, sys
        from dadf_fast.kernels.cpp import build
        p = build.plan(sys.argv[1])
        try:
            build.load(sys.argv[1], announce=False)
        except RuntimeError as exc:
            print(json.dumps({"reason": build.failure_reason(exc, p), "log": p.log, "cached": p.cached}))
    """)
    proc = subprocess.run([sys.executable, "-c", script, csrc], env=_env(tmp_path / "cache"), cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["reason"].startswith("the C++ extension failed to build (")
    assert "dadf_fast_test_broken_source" in out["reason"]
    assert out["reason"].endswith(f"(full log: {out['log']})")
    with open(out["log"]) as f:
        assert "dadf_fast_test_broken_source" in f.read()
    assert out["cached"] is False


# ---------------------------------------------------------------------------------------
# the real extension
# ---------------------------------------------------------------------------------------


def _real_extension():
    mod, reason = load_extension()
    if mod is None:
        if os.environ.get("CI"):
            pytest.fail(f"under CI the C++ extension must build: {reason}")
        pytest.skip(reason)
    return mod


def test_loaded_extension_is_the_jit_build_of_these_sources():
    """Under CI this proves the tests ran the compiled extension, built from csrc/ as it is."""
    mod = _real_extension()
    p = build.plan()
    assert os.path.realpath(mod.__file__) == os.path.realpath(p.library)
    assert p.cached and mod.SOURCE_HASH == source_hash() == p.src_hash
    assert sys.modules["dadf_fast._C"] is mod
    assert not os.path.realpath(mod.__file__).startswith(os.path.realpath(PACKAGE_DIR) + os.sep)
    leftovers = [f for f in os.listdir(PACKAGE_DIR) if f.startswith("_C") and f.endswith(".so")]
    assert not leftovers, f"a compiled extension in the package tree would be ambiguous: {leftovers}"


def test_prebuild_command_reuses_the_cache(tmp_path):
    mod = _real_extension()
    before = os.stat(mod.__file__).st_mtime_ns
    proc = subprocess.run([sys.executable, "-m", "dadf_fast.kernels.cpp.build"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "compiling" not in proc.stderr
    assert f"dadf-fast: C++ extension {mod.__file__} loaded from the cache in" in proc.stdout
    assert f"SOURCE_HASH={source_hash()}" in proc.stdout
    assert os.stat(mod.__file__).st_mtime_ns == before
