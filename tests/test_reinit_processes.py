"""The sweep split across worker processes gives the single-process sweep's results to the last count."""
from __future__ import annotations

import json
import logging

import pytest

from hparr import files, reinit
from hparr.cli import main
from hparr.errors import UsageError
from hparr.models import build_model

pytestmark = pytest.mark.slow  # starts worker processes


def sweep_document(tmp_path, processes: str, snaps) -> dict:
    logging.getLogger("hparr").handlers.clear()
    results = tmp_path / f"results_{processes}"
    rc = main(["reinit", "--arch", "lenet", "--dataset", "digits", "--load-from", str(snaps / "lenet_3.pt"),
               "--inits-from", str(snaps), "--rand-trials", "2", "--batch-size", "64", "--seed", "5",
               "--results", str(results), "--eval-processes", processes, "--no-progress"])
    assert rc == 0
    (path,) = results.rglob("reinit_*.json")
    return json.loads(path.read_text())


def test_two_processes_equal_one_exactly(tmp_path):
    snaps = tmp_path / "models"
    for epoch, seed in ((0, 1), (1, 2), (3, 3)):
        files.save_torch(build_model("lenet", 10, 1, seed=seed).state_dict(), snaps / f"lenet_{epoch}.pt")
    one, two = sweep_document(tmp_path, "1", snaps), sweep_document(tmp_path, "2", snaps)
    assert one["eval_processes"]["processes"] == 1
    assert two["eval_processes"] == {"requested": "2", "processes": 2, "threads": 1, "why": "--eval-processes 2"}
    assert set(one["init_from_epoch"]) == {"0", "1", "rand"} and one["num_test"] == 450
    assert len(one["rand_trials"]["values"]["init_from_epoch"]) == 2
    for key in ("correct_top1", "correct_top5", "trained_correct", "init_from_epoch", "loss_init_from_epoch",
                "agreement_init_from_epoch", "trained_loss", "rand_trials", "rand_std", "relative_drop", "method"):
        assert one[key] == two[key], key  # floats too: the same sums in the same order
    assert one["method"] == "shared-prefix"


def test_sweep_in_processes_equals_the_plain_loop():
    """The library call: the multi-process shared-prefix sweep against the plain reference loop."""
    import torch

    model = build_model("lenet", 10, 1, seed=0)
    alternatives = {str(s): build_model("lenet", 10, 1, seed=s).state_dict() for s in (1, 2)}
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 1, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g))
               for _ in range(5)]
    ref = reinit.plain_reinit_sweep(model, alternatives, batches, with_linear=True)
    got = reinit.reinit_sweep(model, alternatives, iter(batches), with_linear=True, processes=3)
    assert got.method == "shared-prefix" and got.total == ref.total == 80
    assert (got.correct == ref.correct).all() and (got.agree == ref.agree).all()
    assert got.trained_correct == ref.trained_correct
    assert (got.loss == ref.loss).all() and got.trained_loss == ref.trained_loss


@pytest.mark.parametrize("value", ["0", "two", "-1", "1.5"])
def test_bad_eval_processes_is_one_line(value):
    with pytest.raises(UsageError, match="--eval-processes must be"):
        reinit.parse_eval_processes(value)
