"""Loading, half precision, the LRU cache and safe release."""

import gc
import threading
import time
import weakref

import pytest
import torch
import whisper

from checkpoints import write_checkpoint
from engine import ModelLoadError
from engine.device.cuda import DevicePlan
from engine.models.cache import ModelCache, load_model, weights_mb

CPU32 = DevicePlan(torch.device("cpu"), "fp32", "cpu, fp32")


def test_load_by_path(micro_checkpoint):
    model = load_model(str(micro_checkpoint), CPU32)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not any(p.requires_grad for p in model.parameters())


def test_fp16_plan_converts_the_resident_weights(micro_checkpoint):
    # The conversion happens on the host before the move to the device, so it is checked on CPU.
    fp32 = load_model(str(micro_checkpoint), CPU32)
    fp16 = load_model(str(micro_checkpoint), DevicePlan(torch.device("cpu"), "fp16", "cpu, fp16"))
    assert all(p.dtype == torch.float16 for p in fp16.parameters())
    assert weights_mb(fp16) == pytest.approx(weights_mb(fp32) / 2, rel=0.01)


def test_int8_quantises_the_linear_layers(micro_checkpoint):
    model = load_model(str(micro_checkpoint), DevicePlan(torch.device("cpu"), "int8", "cpu, int8"))
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Linear" in kinds and any("quantized" in type(m).__module__ for m in model.modules())


def test_missing_checkpoint_says_how_to_supply_one(tmp_path):
    with pytest.raises(ModelLoadError, match="model:"):
        load_model(str(tmp_path / "large-v3.pt"), CPU32)


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint" * 100)
    with pytest.raises(ModelLoadError, match="not a valid whisper checkpoint"):
        load_model(str(bad), CPU32)


def test_unknown_name():
    with pytest.raises(ModelLoadError, match="large-v3"):
        load_model("huge-v9", CPU32)


def test_failed_download_explains_the_offline_route(tmp_path, monkeypatch):
    # A closed local port stands in for "no internet": urllib fails at once.
    monkeypatch.setitem(whisper._MODELS, "tiny", "http://127.0.0.1:9/abc/tiny.pt")
    with pytest.raises(ModelLoadError) as error:
        load_model("tiny", CPU32, download_root=str(tmp_path))
    assert "Could not download" in str(error.value) and "model: /path/to/tiny.pt" in str(error.value)


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lru")
    return [
        str(write_checkpoint(folder / f"m{seed}.pt", "micro", lively=False, seed=seed)) for seed in range(3)
    ]


def make_cache(capacity, loads):
    def loader(name):
        loads.append(name)
        return load_model(name, CPU32)

    return ModelCache(loader, capacity, torch.device("cpu"))


def test_lru_evicts_least_recently_used_and_frees_it(three_checkpoints):
    a, b, c = three_checkpoints
    loads = []
    cache = make_cache(2, loads)
    with cache.lease(a) as model_a:
        ref_a = weakref.ref(model_a)
    del model_a
    with cache.lease(b):
        pass
    with cache.lease(a):  # a is now the most recently used
        pass
    with cache.lease(c):  # evicts b
        pass
    assert [m.name for m in cache.loaded()] == [c, a]
    with cache.lease(a):
        pass
    assert loads == [a, b, c]  # a was never loaded twice
    with cache.lease(b):  # evicts c (least recent), loads b again
        pass
    assert loads == [a, b, c, b] and not cache.is_loaded(c)
    cache.release()
    gc.collect()
    assert ref_a() is None, "released model is garbage"


def test_release_waits_for_the_model_in_use(three_checkpoints):
    name = three_checkpoints[0]
    cache = make_cache(2, [])
    leased = threading.Event()
    finish = threading.Event()

    def job():
        with cache.lease(name) as model:
            leased.set()
            finish.wait(10)
            model.encoder(torch.zeros(1, 80, 3000))  # still usable after release() was asked

    thread = threading.Thread(target=job)
    thread.start()
    leased.wait(10)
    report = cache.release()
    assert report.deferred == [name] and report.released == []
    assert cache.is_loaded(name)
    finish.set()
    thread.join(10)
    assert not cache.is_loaded(name), "freed as soon as the job returned the lease"


def test_release_with_wait_blocks_until_jobs_finish(three_checkpoints):
    name = three_checkpoints[0]
    cache = make_cache(2, [])
    leased = threading.Event()

    def job():
        with cache.lease(name):
            leased.set()
            time.sleep(0.5)

    thread = threading.Thread(target=job)
    thread.start()
    leased.wait(10)
    report = cache.release(wait=True, timeout=10)
    assert report.released == [name] and report.deferred == []
    thread.join()


def test_idle_release_and_offload(three_checkpoints):
    name = three_checkpoints[0]
    cache = make_cache(2, [])
    with cache.lease(name):
        pass
    assert cache.release_idle(60) == []  # not idle long enough
    time.sleep(0.2)
    assert cache.release_idle(0.1) == [name]
    assert not cache.is_loaded(name)
