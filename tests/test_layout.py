"""The packages' arrows, checked on the import graph, so that a change cannot bend them silently.

    app.py -> ui -> jobs, output -> engine (its facade and its subpackages)
    jobs (the durable job manager, its store, data_dir) -> engine; the engine never imports jobs
    output (formats, subtitles) -> engine's leaves only; the engine never imports output
    engine.decoding -> engine.audio, engine.models, engine.device, and the leaves
    engine.diarization -> engine.audio, engine.models, engine.device, engine.decoding (its batch memory)
    engine.audio, engine.models -> engine.device;  engine.device -> nothing of the engine
    leaves (engine.results, engine.errors, engine.languages): imported by anyone, import no package

Every import counts, those inside functions too: a lazy import is still an edge.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("audio", "decoding", "diarization", "models", "device")
LEAVES = ("engine.results", "engine.errors", "engine.languages")
# what each subpackage of the engine may import from the rest of the engine
# the modules and subpackages inside the three packages (`engine.audio`, `jobs.store`, ...): `from
# engine import Engine` also records "engine.Engine", a name, which is fine
PACKAGE_MODULES = {
    f"{package}.{path.stem if path.suffix else path.name}"
    for package in ("engine", "jobs", "output")
    for path in (ROOT / package).iterdir()
    if path.name != "__init__.py" and (path.suffix == ".py" or (path / "__init__.py").exists())
}
ALLOWED = {
    "engine.device": (),
    "engine.audio": ("engine.device",),
    "engine.models": ("engine.device",),
    "engine.decoding": ("engine.audio", "engine.models", "engine.device"),
    "engine.diarization": ("engine.audio", "engine.models", "engine.device", "engine.decoding"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set:
    """The absolute module names `path` imports (relative imports resolved against its package)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from engine.audio import vad`
    return found


def graph(folder: str) -> dict:
    return {module_name(path): imports(path) for path in sorted((ROOT / folder).rglob("*.py"))}


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_engine_imports_no_front_end():
    bad = {
        module: sorted(
            name for name in names if name.split(".")[0] in ("ui", "jobs", "output", "app", "bench", "tests")
        )
        for module, names in graph("engine").items()
    }
    assert not {m: n for m, n in bad.items() if n}, bad


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_engine_subpackage_imports_only_what_lies_below_it(package):
    allowed = (package, *ALLOWED[package], *LEAVES)
    wrong = {}
    for module, names in graph(package.replace(".", "/")).items():
        engine_names = {name for name in names if within(name, "engine") and name != "engine"}
        # `from engine.audio import vad` also records "engine.audio": a package is fine where its modules are
        outside = sorted(name for name in engine_names if not any(within(name, ok) for ok in allowed))
        if outside:
            wrong[module] = outside
    assert not wrong, f"{package} may import only {allowed}: {wrong}"


def test_the_leaves_import_no_engine_package():
    for leaf in LEAVES:
        names = imports(ROOT / (leaf.replace(".", "/") + ".py"))
        packages = sorted(name for name in names for sub in SUBPACKAGES if within(name, f"engine.{sub}"))
        assert not packages, f"{leaf} imports {packages}"


def test_output_reads_only_the_engine_s_results():
    def wrong(name: str) -> bool:
        if name.split(".")[0] in ("ui", "app"):
            return True
        return within(name, "engine") and name != "engine" and not any(within(name, leaf) for leaf in LEAVES)

    bad = {module: sorted(filter(wrong, names)) for module, names in graph("output").items()}
    assert not {m: n for m, n in bad.items() if n}, bad


def test_jobs_and_output_import_no_front_end():
    bad = {
        module: sorted(name for name in names if name.split(".")[0] in ("ui", "app", "bench", "tests"))
        for folder in ("jobs", "output")
        for module, names in graph(folder).items()
    }
    assert not {m: n for m, n in bad.items() if n}, bad


def test_the_front_ends_import_only_the_packages_public_faces():
    # ui/ and app.py name `engine`, `jobs` and `output`, never a module inside them
    inner = {}
    for module, names in {**graph("ui"), "app": imports(ROOT / "app.py")}.items():
        deep = sorted(
            name
            for name in names
            if name.split(".")[0] in ("engine", "jobs", "output")
            and ".".join(name.split(".")[:2]) in PACKAGE_MODULES
        )
        if deep:
            inner[module] = deep
    assert not inner, inner


def test_the_checker_sees_a_wrong_edge(tmp_path, monkeypatch):
    # the rules above must be able to fail: a lazy import of the decode loop from a device module
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    device = tmp_path / "engine" / "device"
    device.mkdir(parents=True)
    (device / "__init__.py").write_text("")
    (device / "probe.py").write_text("def f():\n    from engine.decoding.decode_loop import DecodeLoop\n")
    with pytest.raises(AssertionError, match="engine.decoding.decode_loop"):
        test_each_engine_subpackage_imports_only_what_lies_below_it("engine.device")
