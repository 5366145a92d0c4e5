"""`hparr train`: snapshots, exact resume, evaluation, logging and every flag, on the digits dataset."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hparr import checkpoints as ck
from hparr.cli import main
from hparr.data import DataOptions
from hparr.training import TOP_LEVEL_FACTS, TrainSettings, train

ROOT = Path(__file__).resolve().parents[1]


def settings(tmp_path, **kw):
    data = kw.pop("data", DataOptions(dataset="digits"))
    base = dict(arch="lenet", data=data, epochs=2, lr=0.01, seed=0, models_path=str(tmp_path / "models"),
                tb_logdir=None, progress=False, batch_size=128)
    base.update(kw)
    return TrainSettings(**base)


def weights(path):
    return ck.load_state_dict_file(path)


@pytest.mark.slow
def test_resume_gives_the_same_weights_as_a_straight_run(tmp_path):
    common = dict(lr_step=1, lr_decay=0.7, snapshot_every=1,
                  data=DataOptions(dataset="digits", augmentation=True))
    straight = train(settings(tmp_path / "a", epochs=3, **common))
    half = train(settings(tmp_path / "b", epochs=2, **common))
    resumed = train(settings(tmp_path / "b", epochs=3, resume_from=str(Path(half.run_dir) / "lenet_1.tar"),
                             **common))
    a, b = weights(Path(straight.run_dir) / "lenet_3.pt"), weights(Path(resumed.run_dir) / "lenet_3.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the resumed run continued with epoch 3: it did not repeat epoch 2
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert straight.final["test"]["top1"] == resumed.final["test"]["top1"]


def test_resume_auto_picks_the_newest_complete_snapshot(tmp_path):
    first = train(settings(tmp_path, epochs=2, snapshot_every=1))
    run_dir = Path(first.run_dir)
    (run_dir / "lenet_7.tar").write_bytes(b"torn")  # an interrupted write never wins
    again = train(settings(tmp_path, epochs=3, resume_from="auto"))
    assert [h["epoch"] for h in again.history] == [1, 2, 3]
    assert (run_dir / "lenet_3.pt").exists()


def test_a_rerun_of_a_finished_run_leaves_its_final_snapshot_as_it_is(tmp_path):
    # finished results record the final snapshot's size and mtime: a resume that trains nothing must not rewrite it,
    # but one resumed from the last epoch's .tar writes the final snapshot where it is missing
    first = train(settings(tmp_path, epochs=1, snapshot_every=1))
    final = Path(first.run_dir) / "lenet_1.pt"
    before = (final.stat().st_mtime_ns, final.read_bytes())
    again = train(settings(tmp_path, epochs=1, resume_from="auto"))
    assert again.history == first.history and (final.stat().st_mtime_ns, final.read_bytes()) == before
    final.unlink()
    train(settings(tmp_path, epochs=1, resume_from=str(Path(first.run_dir) / "lenet_0.tar")))
    written, last = weights(final), weights(Path(first.run_dir) / "lenet_0.tar")
    assert written.keys() == last.keys() and all(torch.equal(written[k], last[k]) for k in last)


def test_snapshot_schedule_names_and_contents(tmp_path):
    out = train(settings(tmp_path, epochs=5, snapshot_every=2, snapshot_all_until=1))
    run_dir = Path(out.run_dir)
    assert run_dir == tmp_path / "models" / "digits" / "lenet" / "0"
    names = sorted(p.name for p in run_dir.glob("lenet_*"))
    assert names == sorted(["lenet_init_0.pt", "lenet_0.tar", "lenet_1.tar", "lenet_3.tar", "lenet_4.tar",
                            "lenet_5.pt"])
    for name, completed in [("lenet_init_0.pt", 0), ("lenet_1.tar", 2), ("lenet_5.pt", 5)]:
        snap = ck.torch_load(run_dir / name)  # weights_only=True: only tensors and plain values
        assert snap["epochs_completed"] == completed
        assert ck.snapshot_epoch(snap, run_dir / name) == completed
        assert snap["arch"] == "lenet" and snap["seeds"]["seed"] == 0
        assert set(snap["versions"]) >= {"torch", "torchvision", "hparr"}
        assert snap["settings"]["lr"] == 0.01 and snap["normalization"]["mean"]
    final = ck.torch_load(run_dir / "lenet_5.pt")
    assert final["metrics"]["test"]["top1"] == out.final["test"]["top1"]
    assert ck.torch_load(run_dir / "lenet_1.tar")["top1_acc"] is not None


def test_validation_split_is_used_and_test_reported_separately(tmp_path):
    data = DataOptions(dataset="digits", split=0.2, stratified=True, split_seed=1)
    out = train(settings(tmp_path, epochs=1, data=data, train_acc=True))
    snap = ck.torch_load(Path(out.run_dir) / "lenet_0.tar")
    assert set(snap["metrics"]) == {"val", "train", "test"}
    per_class = snap["data"]["split"]["per_class"]
    assert per_class == [round(0.2 * 1347) // 10] * 10  # stratified: equal class balance
    assert snap["metrics"]["val"]["count"] == sum(per_class)
    assert snap["top1_acc"] == snap["metrics"]["val"]["top1"]


def test_kill_plateaus_stops_a_stalled_run(tmp_path):
    out = train(settings(tmp_path, epochs=6, lr=1e-12, kill_plateaus=True,
                         data=DataOptions(dataset="digits", split=0.2)))
    assert not out.converged and len(out.history) == 2
    assert not (Path(out.run_dir) / "lenet_6.pt").exists()


def test_a_diverging_loss_stops_with_a_clear_error_and_keeps_snapshots(tmp_path, capsys):
    code = main(["train", "--arch", "lenet", "--dataset", "digits", "--epochs", "3", "--lr", "1e12",
                 "--models-path", str(tmp_path), "--tb-logdir", "", "--seed", "1", "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "loss became" in err and "Traceback" not in err
    assert ck.torch_load(tmp_path / "digits" / "lenet" / "1" / "lenet_init_0.pt")["epochs_completed"] == 0


def test_evaluate_and_evaluate_train_report_a_snapshot(tmp_path, capsys):
    out = train(settings(tmp_path, epochs=2))
    snap = str(Path(out.run_dir) / "lenet_2.pt")
    args = ["--arch", "lenet", "--dataset", "digits", "--resume-from", snap, "--tb-logdir", "",
            "--models-path", str(tmp_path), "--seed", "0"]
    assert main(["train", *args, "--evaluate"]) == 0
    assert f"top1 {out.final['test']['top1']:.2f}%" in capsys.readouterr().out
    assert main(["train", *args, "--evaluate-train"]) == 0
    assert "train: loss" in capsys.readouterr().out
    assert main(["train", "--arch", "lenet", "--dataset", "digits", "--evaluate"]) == 2


def test_a_missing_arch_or_dataset_lists_the_choices_and_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train"]) == 2
    out = capsys.readouterr()
    assert "vgg19_orig" in out.out and out.err.strip() == (
        "hparr train: error: --arch is missing: choose one of the architectures listed above")
    assert main(["train", "--arch", "lenet"]) == 2
    out = capsys.readouterr()
    assert "cifar100" in out.out and out.err.strip() == (
        "hparr train: error: --dataset is missing: choose one of the datasets listed above")
    assert list(tmp_path.iterdir()) == []


def test_bad_flags_are_usage_errors(capsys):
    for flags in (["--optimizer", "rmsprop"], ["--lr", "-1"], ["--noise", "2"], ["--batch-size", "0"]):
        assert main(["train", "--arch", "lenet", "--dataset", "digits", *flags]) == 2
        assert "error:" in capsys.readouterr().err
    assert main(["train", "--arch", "nope", "--dataset", "digits"]) == 2


def test_tensorboard_log_file_adam_cuda_fallback_and_noise(tmp_path, caplog):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = DataOptions(dataset="digits", noise=0.3, noise_seed=5)
    out = train(settings(tmp_path, epochs=1, optimizer="adam", lr=1e-3, cuda=True, amp="bf16",
                         tb_logdir=str(tmp_path / "tb"), data=data))
    if not torch.cuda.is_available():
        assert "no GPU" in caplog.text
    run_dir = Path(out.run_dir)
    assert run_dir == tmp_path / "models" / "digits" / "noise_30" / "lenet" / "0"
    events = EventAccumulator(str(tmp_path / "tb" / "digits" / "noise_30" / "lenet" / "0")).Reload()
    assert {"Loss/train", "Lr", "Accuracy/test/top1"} <= set(events.Tags()["scalars"])
    assert "epoch 1/1" in (run_dir / "train.log").read_text()
    snap = ck.torch_load(run_dir / "lenet_1.pt")
    assert abs(snap["data"]["label_noise"]["realised_ratio"] - 0.3) < 0.05
    assert snap["optimizer_state_dict"]["param_groups"][0].get("betas") is not None


def test_pretrained_weights_file(tmp_path):
    from hparr.models import build_model

    source = build_model("lenet", num_classes=10, in_channels=1, seed=9)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    out = train(settings(tmp_path, epochs=0, weights=str(tmp_path / "w.pth"), pretrained=True))
    init = weights(Path(out.run_dir) / "lenet_pretrained_0.pt")
    assert torch.equal(init["features.0.weight"], source.features[0].weight)


@pytest.mark.slow
def test_root_script_runs_the_same_command():
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--dataset", "digits"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "lenet" in proc.stdout and "--arch is missing" in proc.stderr


def test_remaining_flags_reach_the_run(tmp_path, capsys):
    argv = ["train", "--arch", "lenet", "--dataset", "digits", "--subsample-classes", "5", "--class-sample-seed", "3",
            "--split", "0.1", "--shuffle", "--split-seed", "2", "--unnormalize", "--start-epoch", "1", "--epochs", "2",
            "--weight-decay", "0.001", "--momentum", "0.5", "--workers", "0", "--batch-size", "64", "--lr", "0.01",
            "--seed", "7", "--models-path", str(tmp_path), "--tb-logdir", "", "--channels-last", "off", "--json"]
    assert main(argv) == 0
    run_dir = tmp_path / "digits_5" / "lenet" / "7"
    assert not (run_dir / "lenet_init_0.pt").exists()  # --start-epoch 1: training starts at the second epoch
    snap = ck.torch_load(run_dir / "lenet_2.pt")
    assert [h["epoch"] for h in snap["history"]] == [2]
    group = snap["optimizer_state_dict"]["param_groups"][0]
    assert group["weight_decay"] == 0.001 and group["momentum"] == 0.5
    assert snap["num_classes"] == 5 and len(snap["data"]["class_subset"]["classes"]) == 5
    assert snap["data"]["class_subset"]["seed"] == 3
    assert snap["data"]["split"]["shuffle"] and snap["data"]["split"]["seed"] == 2
    assert snap["normalization"] == {"mean": [0.0], "std": [1.0], "normalized": False}
    # each fact is stored once: the data record holds none of the facts kept at the top level
    assert not set(TOP_LEVEL_FACTS) & set(snap["data"])
    assert (snap["in_channels"], snap["input_size"], snap["dataset"]) == (1, 32, "digits")
    assert snap["settings"]["workers"] == 0 and snap["settings"]["batch_size"] == 64
    assert '"converged": true' in capsys.readouterr().out


@pytest.mark.slow
def test_compile_trains_the_same_model_and_snapshots_plain_keys(tmp_path, capsys, monkeypatch):
    import torch._inductor.config

    # the compiled dropout draws its masks with eager's random ops, so that both runs are comparable
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    # 1347 training images = 3 batches of 449: one compiled shape. --amp is accepted with --compile (on the
    # CPU it trains in float32, as without --compile)
    common = ["train", "--arch", "lenet", "--dataset", "digits", "--epochs", "1", "--batch-size", "449",
              "--lr", "0.05", "--seed", "3", "--tb-logdir", "", "--no-progress"]
    assert main([*common, "--models-path", str(tmp_path / "eager")]) == 0
    assert main([*common, "--models-path", str(tmp_path / "compiled"), "--compile", "--amp"]) == 0
    capsys.readouterr()
    eager = ck.torch_load(tmp_path / "eager" / "digits" / "lenet" / "3" / "lenet_1.pt")
    compiled = ck.torch_load(tmp_path / "compiled" / "digits" / "lenet" / "3" / "lenet_1.pt")
    assert compiled["settings"]["compile"] == "inductor" and eager["settings"]["compile"] is None
    a, b = eager["model_state_dict"], compiled["model_state_dict"]
    assert list(b) == list(a) and not any("_orig_mod" in k for k in b)  # plain keys: loads anywhere
    init = weights(tmp_path / "compiled" / "digits" / "lenet" / "3" / "lenet_init_0.pt")
    assert not torch.equal(b["features.0.weight"], init["features.0.weight"])  # the compiled steps trained it
    for k in a:  # ... the way the eager steps did (fused kernels round differently: not bit for bit)
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), k
def digests(folder: Path) -> dict[str, str]:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_a_run_of_another_configuration_is_refused_and_replaced_only_with_overwrite(tmp_path, capsys):
    def argv(lr, *extra):
        return ["train", "--arch", "lenet", "--dataset", "digits", "--epochs", "1", "--lr", lr, "--seed", "0",
                "--models-path", str(tmp_path / "M"), "--tb-logdir", "", "--no-progress", *extra]

    run_dir = tmp_path / "M" / "digits" / "lenet" / "0"
    assert main(argv("0.01")) == 0
    first = digests(run_dir)
    assert set(first) == {"lenet_init_0.pt", "lenet_0.tar", "lenet_1.pt", "tracking.csv", "train.log"}
    capsys.readouterr()

    assert main(argv("0.05")) == 1  # the same run directory: the original layout has no lr in its path
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and "already holds snapshots of another configuration (--lr 0.01 there, 0.05 here)" in \
        err[0] and "--overwrite" in err[0] and "--resume-from auto" in err[0]
    assert digests(run_dir) == first  # refused before anything was written: every byte as it was

    assert main(argv("0.05", "--overwrite")) == 0
    assert "replacing the run in" in capsys.readouterr().err
    names = sorted(p.name for p in run_dir.glob("lenet_*"))
    assert names == ["lenet_0.tar", "lenet_1.pt", "lenet_init_0.pt"]
    assert all(ck.torch_load(run_dir / n)["settings"]["lr"] == 0.05 for n in names)  # no mix remains
    replaced = digests(run_dir)
    assert all(replaced[n] != first[n] for n in names)

    # flags that do not change the weights (and a longer run) continue the same run
    assert main(argv("0.05", "--epochs", "2", "--resume-from", "auto", "--snapshot-every", "1", "--workers", "0",
                     "--train-acc", "--log", "again.log")) == 0
    assert [h["epoch"] for h in ck.torch_load(run_dir / "lenet_2.pt")["history"]] == [1, 2]
    after = digests(run_dir)
    assert all(after[n] == replaced[n] for n in names)  # the snapshots it continued from are untouched


# --- one writer per run directory ------------------------------------------------------------------

def lock_held(run_dir: Path, proc, timeout: float = 300.0) -> dict:
    """The holder record of the run directory's lock once `proc` wrote it (and the run is under way)."""
    import json
    import time

    from hparr.training import LOCK_NAME

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            info = json.loads((run_dir / LOCK_NAME).read_text())
            if (run_dir / "lenet_init_0.pt").exists():
                return info
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    raise AssertionError(f"no lock in {run_dir} within {timeout} s")


def train_command(models, epochs: int, *extra):
    return [sys.executable, "-m", "hparr", "train", "--arch", "lenet", "--dataset", "digits", "--epochs", str(epochs),
            "--lr", "0.02", "--seed", "5", "--tb-logdir", "", "--no-progress", "--models-path", str(models), *extra]


@pytest.mark.slow
def test_a_second_run_into_a_busy_run_directory_is_refused_naming_the_first(tmp_path):
    run_dir = tmp_path / "M" / "digits" / "lenet" / "5"
    import signal

    first = subprocess.Popen(train_command(tmp_path / "M", 3, "--resume-from", "auto"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        info = lock_held(run_dir, first)
        assert info["pid"] == first.pid and "train" in info["command"]
        first.send_signal(signal.SIGSTOP)  # paused mid-run, however fast the machine: it holds the lock meanwhile
        try:
            second = subprocess.run(train_command(tmp_path / "M", 3, "--resume-from", "auto"), capture_output=True,
                                    text=True, timeout=300)
        finally:
            first.send_signal(signal.SIGCONT)
        assert second.returncode == 2
        errors = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and errors[0].startswith(f"hparr train: error: {run_dir} is in use by another "
                                                         f"training run (pid {first.pid} on "), errors
        assert first.wait(timeout=600) == 0, first.stderr.read()[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    log = (run_dir / "train.log").read_text()
    assert [line.split("epoch ")[1].split()[0] for line in log.splitlines() if " epoch " in line
            and "loss" in line] == ["1/3", "2/3", "3/3"]  # one writer: one set of epoch lines
    assert not (run_dir / ".train.lock").exists()  # released at the end


@pytest.mark.slow
def test_the_lock_of_a_killed_run_does_not_block_the_next(tmp_path):
    import signal

    run_dir = tmp_path / "M" / "digits" / "lenet" / "5"
    first = subprocess.Popen(train_command(tmp_path / "M", 30), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    lock_held(run_dir, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert (run_dir / ".train.lock").exists()  # the file stays, the lock went with the process
    again = subprocess.run(train_command(tmp_path / "M", 2, "--resume-from", "auto"), capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert ck.torch_load(run_dir / "lenet_2.pt")["epochs_completed"] == 2


def test_the_run_directory_lock_names_its_holder_and_leaves_nothing_behind(tmp_path):
    import os

    from hparr.errors import UsageError
    from hparr.training import LOCK_NAME, RunDirectoryLock

    run_dir = tmp_path / "a" / "b" / "c"
    lock = RunDirectoryLock.acquire(run_dir)
    assert (run_dir / LOCK_NAME).is_file()
    with pytest.raises(UsageError, match=rf"{run_dir} is in use by another training run \(pid {os.getpid()} on "):
        RunDirectoryLock.acquire(run_dir)  # another open file of the same process conflicts too
    lock.release()
    assert not (tmp_path / "a").exists()  # the folders it made, empty again, are gone
    kept = tmp_path / "kept"
    kept.mkdir()
    lock = RunDirectoryLock.acquire(kept)
    (kept / "lenet_init_0.pt").write_bytes(b"x")
    lock.release()
    lock.release()  # once is enough
    assert sorted(p.name for p in kept.iterdir()) == ["lenet_init_0.pt"]
    RunDirectoryLock.acquire(kept).release()  # free again


def test_a_refused_run_writes_nothing_and_train_log_is_untouched(tmp_path, capsys):
    from hparr.training import RunDirectoryLock

    first = train(settings(tmp_path, epochs=1))
    run_dir = Path(first.run_dir)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    lock = RunDirectoryLock.acquire(run_dir)  # a run under way in this run directory
    capsys.readouterr()
    try:
        argv = ["train", "--arch", "lenet", "--dataset", "digits", "--epochs", "2", "--lr", "0.01", "--seed", "0",
                "--models-path", str(tmp_path / "models"), "--tb-logdir", "", "--no-progress", "--resume-from", "auto"]
        assert main(argv) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and "is in use by another training run" in err[0]
        assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.name != ".train.lock"} == before
    finally:
        lock.release()
    assert main(argv) == 0  # free again: the run continues


def test_weight_decay_reaches_adam_and_defaults_to_the_papers_per_optimizer(tmp_path):
    from hparr.training import make_optimizer

    params = [torch.nn.Parameter(torch.zeros(3))]
    for optimizer, given, applied in (("adam", 0.01, 0.01), ("adam", None, 0.0), ("sgd", None, 1e-4),
                                      ("sgd", 0.003, 0.003)):
        opt, _ = make_optimizer(params, settings(tmp_path, optimizer=optimizer, weight_decay=given))
        assert isinstance(opt, torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)
        assert opt.param_groups[0]["weight_decay"] == applied, (optimizer, given)
    # Adam's weight_decay: one step of torch's Adam with the L2 term added to the gradient, by hand
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt, _ = make_optimizer([w], settings(tmp_path, optimizer="adam", lr=0.1, weight_decay=0.5))
    w.grad = torch.tensor([0.2, 0.2])
    opt.step()
    g = torch.tensor([0.2, 0.2]) + 0.5 * torch.tensor([1.0, -2.0])
    m, v = 0.1 * g, 0.001 * g * g
    expected = torch.tensor([1.0, -2.0]) - 0.1 * (m / 0.1) / ((v / 0.001).sqrt() + 1e-8)
    assert torch.allclose(w.detach(), expected)


def test_a_run_of_adam_from_before_its_weight_decay_counted_is_the_same_configuration(tmp_path):
    """Adam once ignored --weight-decay: its snapshots record 1e-4 while their optimizer applied none. The run
    directory compares the weight decay the optimizer applied."""
    from dataclasses import asdict

    from hparr.results import SNAPSHOT_FORMAT
    from hparr.training import other_configurations, weight_configuration

    seeds = {"seed": 0}
    old = asdict(settings(tmp_path, optimizer="adam", weight_decay=1e-4))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save({"format": SNAPSHOT_FORMAT, "settings": old, "seeds": seeds, "model_state_dict": {},
                "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 0.01, "weight_decay": 0}]}},
               run_dir / "lenet_init_0.pt")

    def differences(**kw):
        found = other_configurations(run_dir, weight_configuration(asdict(settings(tmp_path, **kw)), seeds))
        return [d for _, ds in found for d in ds]

    assert differences(optimizer="adam") == []  # the default: none, as that run applied
    assert differences(optimizer="adam", weight_decay=1e-4) == ["--weight-decay 0 there, 0.0001 here"]


def test_target_outlook_extrapolates_the_last_epochs_rate_to_the_cap():
    from hparr.training import target_outlook

    history = [{"epoch": e, "train_top1": a} for e, a in enumerate([10.0, 20.0, 26.0, 30.0, 33.0, 35.0, 36.0], 1)]
    # epochs 2..7 (window 5): (36 - 20) / 5 = 3.2 points per epoch; at epoch 20: 36 + 3.2 * 13 = 77.6
    outlook = target_outlook(history, 99, 20)
    assert outlook == {"epoch": 7, "train_top1": 36.0, "rate": pytest.approx(3.2), "window": 5,
                       "projected": pytest.approx(77.6)}
    assert target_outlook(history, 77, 20) is None  # within reach at that rate
    assert target_outlook(history, 99, 40) is None  # 36 + 3.2 * 33 = 141.6: within reach given more epochs
    assert target_outlook(history[:5], 99, 20) is None  # epochs 1..5: no epoch 5 epochs back from the last
    assert target_outlook(history, 99, 20, window=2)["rate"] == pytest.approx((36.0 - 33.0) / 2)
    assert target_outlook(history, 36, 20) is None  # reached
    falling = history + [{"epoch": 8, "train_top1": 5.0}]
    assert target_outlook(falling, 99, 20)["projected"] == 0.0  # 5 + 12 (5 - 26) / 5 < 0: clipped at 0


def test_an_out_of_reach_target_is_said_in_the_log_the_final_snapshot_and_the_headline(tmp_path, capsys):
    from hparr.training import OUTLOOK_EPOCHS

    window = OUTLOOK_EPOCHS  # said first at epoch window + 1, the first with an epoch `window` before it
    epochs = window + 2
    argv = ["train", "--arch", "lenet", "--dataset", "digits", "--train-size", "100", "--epochs", str(epochs),
            "--lr", "1e-6", "--until-train-acc", "100", "--seed", "0", "--models-path", str(tmp_path), "--tb-logdir",
            "", "--no-progress", "--no-track"]
    assert main(argv) == 0
    out = capsys.readouterr()
    run_dir = tmp_path / "digits" / "train_100" / "lenet" / "0"
    snap = ck.torch_load(run_dir / f"lenet_{epochs}.pt")
    history = {h["epoch"]: h["train_top1"] for h in snap["history"]}
    seen = snap["stopped"]["out_of_reach"]
    k = window + 1
    rate = (history[k] - history[1]) / window
    assert seen == {"epoch": k, "train_top1": history[k], "rate": pytest.approx(rate), "window": window,
                    "projected": pytest.approx(min(100.0, max(0.0, history[k] + rate * (epochs - k))))}
    assert snap["stopped"]["reason"] == "epochs exhausted" and snap["stopped"]["epoch"] == epochs
    said = (f"own-label train top-1 {history[k]:.2f}% at epoch {k} of {epochs}, {rate:+.2f} points/epoch over the "
            f"last {window} epochs: --until-train-acc 100 looks out of reach within --epochs {epochs} at this rate")
    assert said in out.err and said in (run_dir / "train.log").read_text()
    assert out.err.count("looks out of reach") == 1  # said once
    # the epochs' lines say how long is left (at most: the target may stop it earlier); the last one does not
    lines = [line for line in out.err.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == [f"{e}/{epochs}" for e in range(1, epochs + 1)]
    assert all(" s/epoch, at most " in line and line.endswith(" left") for line in lines[:-1])
    assert "left" not in lines[-1] and lines[0].split()[2:4] == ["train", "loss"]
    # the headline: the final model's epoch of the cap, why it stopped, its accuracies by split
    final = snap["metrics"]["test"]["top1"]
    assert out.out.splitlines() == [
        f"final model, epoch {epochs} of {epochs} (epochs exhausted; --until-train-acc 100 not reached, out of reach "
        f"at the rate of epochs 1-{k}): test top-1 {final:.2f}%, train top-1 {history[epochs]:.2f}% (the labels it "
        "was trained on)",
        f"snapshots in {run_dir}"]
