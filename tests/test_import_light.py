import importlib.util
import subprocess
import sys
from pathlib import Path


def test_top_level_import_stays_light():
    code = (
        "import sys, wildguard_lite, wildguard_lite.cli, wildguard_lite.convert;"
        "heavy = [m for m in ('torch', 'transformers', 'llama_cpp', 'gguf', 'onnxruntime', 'onnx', 'optimum') if m in sys.modules];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_missing_extra_gives_install_hint(monkeypatch):
    from wildguard_lite.errors import MissingDependencyError, require

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import raises ImportError
    try:
        require("llama_cpp", "gguf")
    except MissingDependencyError as exc:
        assert "pip install 'wildguard-lite[gguf]'" in str(exc)
    else:
        raise AssertionError("expected MissingDependencyError")


def test_one_import_mechanism():
    """convert/ and benchmarks/ reach the package through setuptools' package-dir alone: no
    graft of the checkout root onto the package path (it made `wildguard_lite.tests` and a
    second, different `wildguard_lite.wildguard_lite.errors.WildGuardLiteError` importable)."""
    import wildguard_lite

    assert [Path(p) for p in wildguard_lite.__path__] == [Path(wildguard_lite.__file__).parent]
    for name in ("wildguard_lite.tests", "wildguard_lite.wildguard_lite"):
        assert importlib.util.find_spec(name) is None, name
