"""The benchmark's own machinery: the offline conversion for faster-whisper, the inputs,
one worker run, and the report. (The benchmark itself is `python -m bench`.)"""
import subprocess
import wave

import numpy as np
import pytest
import torch
import whisper

from checkpoints import _probe_mels, write_checkpoint
from conftest import LONG_11_MIN, shared_audio

from bench import report, runners
from bench.__main__ import parse, run_worker, write_section


@pytest.fixture(scope="module", params=["micro", "v3micro"])
def converted(request, tmp_path_factory):
    """Converted checkpoints: tiny-sized's layout (80 mels), and large-v3's (128 mels, 51,866
    tokens), which the GPU benchmark converts."""
    pytest.importorskip("transformers")
    pytest.importorskip("ctranslate2")
    from bench.convert import convert

    work = tmp_path_factory.mktemp("convert")
    checkpoint = write_checkpoint(work / f"{request.param}.pt", request.param)
    return checkpoint, convert(checkpoint, work / f"ct2-{request.param}")


def test_tokenizer_json_keeps_whisper_ids_and_encoding(tmp_path):
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer

    from bench.convert import write_tokenizer_json

    built = Tokenizer.from_file(str(write_tokenizer_json(51866, tmp_path)))  # large-v3's vocabulary
    tokenizer = whisper.tokenizer.get_tokenizer(True, num_languages=100)
    assert built.token_to_id("<|startoftranscript|>") == tokenizer.sot
    assert built.token_to_id("<|yue|>") == tokenizer.to_language_token("yue")
    assert built.token_to_id("<|30.00|>") == 51865
    text = " Chief Rowley testified that the workload averages one hundred ten point one cases."
    assert built.encode(text, add_special_tokens=False).ids == tokenizer.encode(text)


def test_conversion_keeps_the_tensors_and_ctranslate2_decodes_like_whisper(converted):
    import ctranslate2

    from bench.convert import check_tensors

    checkpoint, ct2_dir = converted
    assert all(check_tensors(checkpoint, ct2_dir).values())
    assert {p.name for p in ct2_dir.iterdir()} >= {"model.bin", "tokenizer.json", "preprocessor_config.json"}
    model = whisper.load_model(str(checkpoint))
    tokenizer = whisper.tokenizer.get_tokenizer(True, num_languages=model.num_languages, language="en")
    mels = _probe_mels(model.dims.n_mels, 4)
    options = whisper.DecodingOptions(language="en", temperature=0.0, sample_len=20, fp16=False, without_timestamps=True)
    expected = [r.tokens for r in whisper.decode(model, mels, options)]
    ct2 = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32")
    prompt = list(tokenizer.sot_sequence_including_notimestamps)
    got = ct2.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(mels.numpy())), [prompt] * 4,
                       max_length=2 * 20 + 2 * len(prompt), beam_size=1, suppress_blank=True, suppress_tokens=[-1])
    assert [r.sequences_ids[0][:20] for r in got] == expected


def test_the_hour_is_the_recording_repeated_to_3600_s(tmp_path):
    from bench.inputs import recording

    shared_audio(LONG_11_MIN)
    hour = recording("hour", tmp_path)
    seconds = float(subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
                                    str(hour)], capture_output=True, text=True, check=True).stdout)
    assert seconds == pytest.approx(3600, abs=0.1)
    assert recording("hour", tmp_path) == hour  # made once


def test_a_worker_measures_one_implementation(micro_checkpoint, tmp_path):
    audio = whisper.audio.load_audio(str(shared_audio(LONG_11_MIN)))[: 16000 * 70]
    path = tmp_path / "70s.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(16000)
        out.writeframes((audio * 32767).astype(np.int16).tobytes())
    spec = dict(audio=str(path), checkpoint=str(micro_checkpoint), ct2_dir="", device="cpu", batch_size=4,
                max_new_tokens=10, fw_max_new_tokens=17, threads=1)
    engine = run_worker(dict(spec, impl="engine"))
    stock = run_worker(dict(spec, impl="whisper"))
    assert engine["windows"] == 3 and 0 < engine["tokens"] <= 30 and engine["wall_s"] > 0
    assert stock["windows"] >= 3 and stock["tokens"] > 0 and stock["peak_rss_mb"] > 100
    # the GPU run's two concurrent one-hour jobs, here in fp32 (fp16 needs a GPU): both count
    two_jobs = runners.run_engine(runners.Spec(**dict(spec, impl="engine-fp16-2jobs", memory_threshold_mb=5200)),
                                  audio, "fp32", jobs=2)
    assert two_jobs.windows == 6 and 0 < two_jobs.tokens <= 60 and two_jobs.audio_s == 140
    assert run_worker(dict(spec, impl="engine", checkpoint=str(tmp_path / "missing.pt")))["error"].startswith("exit")


def _run(wall, windows=26, tokens=2600, **extra):
    return dict(dict(wall_s=wall, cpu_s=2 * wall, audio_s=677.7, windows=windows, tokens=tokens, peak_rss_mb=900,
                     load=2.0), **extra)


def test_report_shows_ratios_per_round_and_checks_targets():
    runs = {"11min": {
        "whisper": [_run(40, 23, 2300), _run(80, 23, 2300)],
        "engine": [_run(10), _run(16)],  # 4x then 5x
        "engine-int8": [_run(8), _run(12)],
        "fw-batched-int8": [_run(9, 25, 2500), _run(14, 25, 2500)],
    }}
    labels = {impl: (impl, "x") for impl in runs["11min"]}
    text = report.table(runs["11min"], labels, cuda=False)
    assert "**4.50** (4.00–5.00)" in text and "| 23 | 2,300 |" in text
    checks = {name: met for name, _, met in report.targets(runs, cuda=False)}
    assert checks["CPU 11 min: engine fp32 ≥ 4× stock"]
    assert not checks["CPU 11 min: engine fp32 faster than faster-whisper batched int8 (same batch)"]
    assert checks["CPU 11 min: engine int8 faster than faster-whisper batched int8 (same batch)"]


def test_gpu_targets_read_memory_columns():
    hour = {"whisper": [_run(400)], "engine-fp16": [_run(30, weights_mb=2960, reserved_after_release_mb=20)],
            "fw-batched-fp16": [_run(33)], "engine-fp16-2jobs": [_run(60, peak_reserved_mb=5300)]}
    checks = {name: met for name, _, met in report.targets({"hour": hour}, cuda=True)}
    assert checks["GPU 1 h: engine fp16 ≥ 10× stock"] and checks["GPU: resident weights ≤ 3.2 GB"]
    assert not checks["GPU: two concurrent 1 h jobs, peak reserved ≤ 5.2 GB"]


def test_each_device_and_input_has_its_own_section_in_the_results_file(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nprose stays\n")
    write_section(docs, "cpu", "cpu table 1")
    write_section(docs, "cuda", "gpu table")
    write_section(docs, "cpu", "cpu table 2")
    text = docs.read_text()
    assert "prose stays" in text and "cpu table 2" in text and "cpu table 1" not in text and "gpu table" in text


def test_the_gpu_command_defaults_to_large_v3_fp16_on_the_hour(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = parse(["--device", "cuda", "--no-docs"])
    assert args.dims == "large-v3" and args.inputs[0] == "hour" and "engine-fp16" in args.impls
    assert "engine-fp16-2jobs" in args.impls and args.fw_max_new_tokens == 197
    assert "whisper" == args.impls[0]
    cpu = parse(["--device", "cpu"])
    assert cpu.dims == "tiny" and cpu.inputs == ["11min", "hour"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible here")
def test_the_gpu_command_without_a_gpu_stops_before_building_anything(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        parse(["--device", "cuda", "--work-dir", str(tmp_path)])
    assert stopped.value.code == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
