"""The benches' paired timing (training alternates our steps with floor steps on one model, reinit alternates
the shared sweep and the plain loop batch by batch), and the GPU bench's script run on the CPU."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from bench.__main__ import CASES, parse
from bench.common import emit, pick
from bench.original_bench import agreement, command_case
from bench.reinit_bench import alternate, busy_neighbour, processes_case, sweep_case
from bench.study_bench import rounds
from bench.training_bench import interleaved

ROOT = Path(__file__).resolve().parents[1]


class CountingLoader:
    """A loader of fixed batches that records how many it handed out."""

    def __init__(self, batches):
        self.batches, self.fetched = batches, 0

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for b in self.batches:
            self.fetched += 1
            yield b


def batches(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)) for n in sizes]


def test_interleaved_counts_both_sides_and_stops_at_max_batches():
    model = nn.Linear(4, 3)
    before = model.weight.detach().clone()
    loader = CountingLoader(batches([5, 5, 5, 2], seed=0))
    held = batches([5, 5], seed=1)
    out = interleaved(model, loader, held, max_batches=10)
    assert loader.fetched == 4
    assert out["images"] == 17 and out["floor_images"] == 20  # the floor cycles over full held batches
    assert 0 < out["fetch_s"] < out["ours_s"] and out["floor_s"] > 0
    assert not torch.equal(model.weight, before)  # the steps trained the model

    loader = CountingLoader(batches([5, 5, 5, 2], seed=0))
    out = interleaved(nn.Linear(4, 3), loader, held, max_batches=2)
    assert loader.fetched == 2 and out["images"] == 10 and out["floor_images"] == 10


def test_alternate_takes_turns_batch_by_batch_and_times_each_side():
    # a clock that only the work moves: each side spends known seconds before its first batch and on each batch
    now, log = [0.0], []

    def side(name, setup, per_batch):
        def consume(batches):
            now[0] += setup
            for i, b in enumerate(batches):
                log.append((name, i, b))
                now[0] += per_batch(b)
            return name
        return consume

    results, seconds, setup = alternate(side("shared", 0.5, lambda b: b), side("plain", 2.0, lambda b: 3.0),
                                        [10, 11, 12], clock=lambda: now[0])
    assert results == ["shared", "plain"]
    assert log == [("shared", 0, 10), ("plain", 0, 10), ("shared", 1, 11), ("plain", 1, 11),
                   ("shared", 2, 12), ("plain", 2, 12)]
    assert seconds == ([10.0, 11.0, 12.0], [3.0, 3.0, 3.0]) and setup == [0.5, 2.0]
    assert now[0] == 0.5 + 2.0 + 33.0 + 9.0


def test_alternate_raises_an_error_of_either_side_once_both_stop():
    seen = []

    def failing(batches):
        for i, _ in enumerate(batches):
            if i == 1:
                raise ValueError("broken at batch 1")

    def counting(batches):
        seen.extend(batches)
        return len(seen)

    with pytest.raises(ValueError, match="broken at batch 1"):
        alternate(failing, counting, [0, 1, 2, 3])
    assert seen == [0, 1, 2, 3]  # the other side ran to its end alone
def test_modes_and_cases_are_parsed_and_a_bad_command_line_is_one_line(capsys):
    assert parse([]) == ("default", list(CASES), None)
    assert parse(["--quick"]) == ("quick", list(CASES), None)
    assert parse(["--full", "study", "reinit"]) == ("full", ["study", "reinit"], None)
    for bad in (["--quick", "--full"], ["--quick", "nope"], ["--fast"]):
        with pytest.raises(SystemExit) as exc:
            parse(bad)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("python -m bench: error:") and "Traceback" not in "".join(err)
    assert [pick(m, quick=1, default=2, full=3) for m in ("quick", "default", "full")] == [1, 2, 3]
    with pytest.raises(ValueError, match="unknown bench mode"):
        pick("fast", 1, 2, 3)
    # the real entry point: a usage error before any case runs
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "nope"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stdout == "" and "unknown case(s) nope" in proc.stderr


def test_original_must_be_a_folder_holding_reinit_layers_or_it_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "plain.txt").write_text("")
    for bad in (tmp_path / "missing", tmp_path / "plain.txt", tmp_path):  # absent, a file, a folder without the script
        with pytest.raises(SystemExit) as exc:
            parse(["--original", str(bad), "reinit"])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("python -m bench: error: --original ") and "Traceback" not in "".join(err)
    (tmp_path / "reinit_layers.py").write_text("")
    assert parse(["--original", str(tmp_path), "reinit"]) == ("default", ["reinit"], str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "bench", "--original", str(tmp_path / "missing"), "reinit"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == "" and "not a folder" in proc.stderr.strip().splitlines()[-1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no reinit_layers.py"):
        command_case(images=64, rounds=1, original=tmp_path / "empty")


# a stand-in for the original reinit_layers.py: records how it was run, writes a result as the original names it
FAKE_ORIGINAL = r"""import json, os, sys
a = sys.argv
open(os.environ["FAKE_ORIGINAL_LOG"], "a").write(json.dumps([a, os.getcwd(), sys.path[0]]) + "\n")
os.makedirs(out := os.path.join(a[a.index("--results") + 1], "cifar10", "lenet"))
json.dump({"top1_test": 1.5, "init_from_epoch": {"0": [1.5] * 6}}, open(out + "/reinit_lenet_20.json", "w"))
"""


@pytest.mark.slow
def test_the_command_case_runs_the_original_and_hparr_in_turns_and_reports_both_times_and_the_ratio(
        tmp_path, monkeypatch):
    original = tmp_path / "original"
    original.mkdir()
    (original / "reinit_layers.py").write_text(FAKE_ORIGINAL)
    monkeypatch.setenv("FAKE_ORIGINAL_LOG", str(tmp_path / "runs.jsonl"))
    row = command_case(images=64, rounds=2, original=original)
    runs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert len(runs) == 2  # once per round
    for argv, cwd, path0 in runs:
        assert argv[0] == str(original / "reinit_layers.py") and path0 == str(original)  # as `python reinit_layers.py`
        assert argv[argv.index("--arch") + 1] == "lenet" and "--rand" in argv and "--no-progress" not in argv
        assert Path(argv[argv.index("--inits-from") + 1]).name == "inits.txt"
        assert argv[argv.index("--results") + 1] == str(Path(cwd) / "results")  # its own folder, deleted after
        assert Path(cwd).name.startswith("original-") and not Path(cwd).exists()
    assert runs[0][1] != runs[1][1]
    assert row["case"] == "reinit_lenet_command" and row["images"] == 64 and row["rounds"] == 2
    assert len(row["original_s"]) == len(row["hparr_s"]) == 2 and min(row["original_s"] + row["hparr_s"]) > 0
    assert row["ratios"] == pytest.approx([o / h for o, h in zip(row["original_s"], row["hparr_s"])], abs=2e-3)
    assert row["speedup_median"] == pytest.approx(sum(row["ratios"]) / 2, abs=2e-3) and row["goal"] == 5.0
    assert row["goal_met"] == (row["speedup_median"] >= 5.0)
    # hparr really evaluated the trained model; the stand-in's made-up accuracy does not agree with it
    assert row["hparr_top1"] != 1.5 and row["trained_top1_agree"] is False and row["results_agree"] is False
    assert row["checkpoint_layers_equal"].endswith("/6")


def test_without_the_original_hparr_is_timed_alone_and_no_ratio_is_made_up():
    row = command_case(images=64, rounds=1)
    assert len(row["hparr_s"]) == 1 and row["seconds"] == row["hparr_s"][0] > 0
    assert row["original"].startswith("not given") and "speedup_median" not in row and "original_s" not in row


def test_results_agree_on_the_trained_top1_and_the_checkpoint_layers_but_not_the_random_draws():
    # the original stores float32 percentages, hparr rounds to 2 decimals: both are 978 of 10,000
    theirs = {"top1_test": 9.779999732971191, "init_from_epoch": {"0": [9.779999732971191, 10.15000057220459],
                                                                 "rand": [10.0, 11.0]}}
    ours = {"top1_test": 9.78, "init_from_epoch": {"0": [9.78, 10.15], "rand": [9.5, 12.0]}}
    out = agreement(theirs, ours, 10_000)
    assert out["trained_top1_agree"] and out["checkpoint_layers_equal"] == "2/2" and out["results_agree"]
    out = agreement(theirs, {**ours, "init_from_epoch": {"0": [9.78, 10.16]}}, 10_000)
    assert out["trained_top1_agree"] and out["checkpoint_layers_equal"] == "1/2" and not out["results_agree"]
    assert not agreement(theirs, {**ours, "top1_test": 9.79}, 10_000)["trained_top1_agree"]


def test_the_study_rounds_cover_every_seed_once_in_order():
    assert rounds(8, 2) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert rounds(5, 2) == [[0, 1], [2, 3], [4]] and rounds(2, 2) == [[0, 1]]


def test_a_tiny_reinit_row_prints_its_ratio_against_the_plain_loop_of_the_same_run(capsys):
    row = sweep_case("lenet", 64)
    emit(row)
    human, machine_line = capsys.readouterr().out.splitlines()
    printed = json.loads(machine_line[len("JSON "):])
    assert printed == row and human.startswith("case=reinit_lenet  images=64")
    assert f"speedup={row['speedup']:.4g}" in human
    assert row["equal_counts"] is True and row["test_passes_plain"] == 1 + 3 * row["layers"] == 19
    assert row["sweep_s"] > 0 and row["plain_s"] > 0 and row["speedup"] > 0 and row["paired_batches"] == 1
    assert row["measured_over_ideal"] == pytest.approx(row["speedup"] / row["ideal_speedup"], abs=2e-3)


def test_the_processes_rows_time_both_sides_on_equal_results_and_the_neighbour_is_stopped(monkeypatch):
    spinners = []
    real_popen = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: spinners.append(real_popen(*a, **k)) or spinners[-1])
    quiet = processes_case(images=256, rounds=1)
    busy = processes_case(images=256, rounds=1, neighbour=True)
    assert quiet["case"] == "reinit_lenet_processes" and busy["case"] == "reinit_lenet_processes_busy_neighbour"
    for row in (quiet, busy):
        assert row["equal_results"] is True and row["processes"] == 2 and len(row["single_s"]) == 1
        assert row["speedup_median"] == pytest.approx(row["single_s"][0] / row["multi_s"][0], rel=0.01)
    assert len(spinners) == 1 and spinners[0].poll() is not None  # the neighbour spun during its case only
    with busy_neighbour():
        assert len(spinners) == 2 and spinners[1].poll() is None
    assert spinners[1].poll() is not None


@pytest.mark.slow
def test_gpu_bench_runs_its_cases_on_the_cpu_in_quick_mode():
    # `make bench-gpu`'s script, as `python -m bench gpu --device cpu --quick`: the same code, small sizes
    proc = subprocess.run([sys.executable, "-m", "bench", "gpu", "--device", "cpu", "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line[len("JSON "):]) for line in proc.stdout.splitlines() if line.startswith("JSON ")]
    train = [f"gpu_train_{arch}_{mode}" for arch in ("lenet", "resnet18") for mode in ("fp32", "bf16", "bf16_compile")]
    assert [r["case"] for r in rows] == ["machine", "gpu_data", *train, "gpu_reinit_lenet", "gpu_projections_vgg11",
                                         "gpu_total"]
    case = {r["case"]: r for r in rows}
    assert case["machine"]["device"] == "cpu" and case["gpu_data"]["images"] == 256
    assert case["gpu_data"]["same_batches_as_cpu"] is True  # the device path gave the CPU path's batches
    for name in train:
        r = case[name]
        assert (r["batch"], r["steps"], r["device"]) == (16, 2, "cpu")
        assert r["amp_dtype"] == "float32"  # --amp trains in float32 on the CPU, as `hparr train --amp` does
        assert r["compile_backend"] == ("aot_eager" if r["mode"] == "bf16_compile" else None)
        assert min(r["ours_img_s"], r["floor_img_s"], r["baseline_img_s"]) > 0
        assert r["overhead_vs_floor"] == pytest.approx(r["floor_img_s"] / r["ours_img_s"] - 1)
        assert r["speedup_vs_baseline"] == pytest.approx(r["ours_img_s"] / r["baseline_img_s"])
        fp32 = case[f"gpu_train_{r['arch']}_fp32"]["baseline_img_s"]
        assert r["speedup_vs_fp32_baseline"] == pytest.approx(r["ours_img_s"] / fp32)
        assert ("speedup_goal_met" in r) == (r["mode"] == "bf16_compile")
    reinit = case["gpu_reinit_lenet"]
    assert reinit["equal_counts"] is True and reinit["images"] == 32 and reinit["test_passes_plain"] == 19
    assert case["gpu_projections_vgg11"]["snapshots"] == 3 and case["gpu_total"]["seconds"] > 0
def test_safetensors_case_reads_only_the_analyzed_tensors(tmp_path):
    from bench.projections_bench import safetensors_case

    (row,) = safetensors_case(str(tmp_path), arch="resnet18", num_classes=10, input_size=32, repeats=1)
    assert row["tensors_read"] == 17 and row["tensors"] == 122  # the 3x3/7x7 conv weights of 122 tensors
    assert 0 < row["read_mb"] < row["file_mb"] and row["read_cold_s"] > 0 and row["torch_load_cold_s"] > 0
    assert row["analyze_warm_s"] > 0 and row["torch_load_analyze_warm_s"] > 0
    assert list(tmp_path.iterdir()) == []  # everything is deleted


def test_hash_case_times_the_checkpoint_hash_within_the_analysis(tmp_path):
    from bench.projections_bench import hash_case

    (row,) = hash_case(str(tmp_path), arch="resnet18", num_classes=10, input_size=32, repeats=1)
    assert row["algorithm"] == "xxh3-128" and 0 < row["hashed_mb"] <= row["file_mb"]
    assert row["hash_s"] > 0 and row["analyze_s"] > 0 and row["hash_share"] > 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_onnx_case_times_the_command_on_an_exported_file_against_the_same_weights_in_torch(tmp_path):
    from bench.projections_bench import onnx_case

    (row,) = onnx_case(str(tmp_path), num_classes=10, repeats=1)
    assert row["convs"] == 52 and 5 < row["file_mb"] < 12  # mobilenet_v2's convs, its BatchNorms folded
    assert row["seconds"] > 0 and row["torch_pt_s"] > 0 and row["cold_process_s"] > row["seconds"]
    assert row["ratio_vs_torch_pt"] == pytest.approx(row["seconds"] / row["torch_pt_s"], abs=0.02)
    assert list(tmp_path.iterdir()) == []


def test_the_null_case_gives_every_cell_its_rate_and_limit_and_the_beta_nulls_rate(monkeypatch):
    from bench import null_bench
    from bench.null_bench import cells, fpr_row

    draws, grid = cells("full")
    assert draws == 400 and [d for d, _ in grid] == [4, 9, 25, 27, 144, 576, 4608]
    assert all(ns == [16, 64, 256, 1024, 4096, 16384] for _, ns in grid)  # the whole grid
    assert all(n * d <= 2 ** 23 for d, ns in cells("default")[1] for n in ns)

    # the tests of the 40 draws of a cell, made up: draw r has p-value r / 100 under the law's null (p <= 0.05 for
    # r = 0..5: 6 of 40), its KS p-value r / 200 (11 of 40), its sign p-value 1 - r / 100 (none), and under the
    # Beta null (called without nulls) (r + 30) / 100 for N = 16 (none) and r / 400 for N = 64 (21 of 40)
    calls = []

    def tests(layers, nulls=None):
        calls.append((len(layers), {c.shape for c, _ in layers}, {d for _, d in layers}, nulls and set(nulls)))
        n = layers[0][0].size
        if nulls is None:
            return [{"p_value": (r + 30) / 100 if n == 16 else r / 400} for r in range(len(layers))]
        return [{"p_value": r / 100, "p_ks": r / 200, "p_sign": 1 - r / 100} for r in range(len(layers))]

    monkeypatch.setattr(null_bench, "bias_tests_of_layers", tests)
    row = fpr_row("uniform", 4, [16, 64], draws=40)
    assert row["null"] == "uniform" and row["N"] == [16, 64] and row["draws"] == 40
    assert row["limit"] == 0.1189  # 0.05 + 2 sqrt(0.05 x 0.95 / 40) = 0.11892
    assert row["fpr"] == [0.15, 0.15] and row["fpr_ks"] == [0.275, 0.275] and row["fpr_sign"] == [0.0, 0.0]
    assert row["fpr_beta_null"] == [0.0, 0.525]
    assert row["within"] is False  # 0.15 > 0.1189
    assert calls == [(40, {(16,)}, {4}, {"uniform"}), (40, {(16,)}, {4}, None),
                     (40, {(64,)}, {4}, {"uniform"}), (40, {(64,)}, {4}, None)]
    # a Gaussian cell's null is the Beta law itself: its rate under the Beta null is its rate, with no second call
    calls.clear()
    row = fpr_row("gaussian", 9, [16], draws=100)
    assert row["limit"] == 0.0936 and row["fpr"] == row["fpr_beta_null"] == [0.06] and row["within"] is True
    assert calls == [(100, {(16,)}, {9}, {"beta"})]
    monkeypatch.undo()  # and so with the real tests, on real draws
    assert fpr_row("gaussian", 9, [16], draws=20)["fpr_beta_null"] == fpr_row("gaussian", 9, [16], draws=20)["fpr"]
