"""`hparr reinit` on a paper architecture never imports torchvision (importing it costs about a second), and
without --plots not the report package either (its scipy.stats costs about half a second on CIFAR data)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

SCRIPT = """
import sys
from hparr import files
from hparr.cli import main
from hparr.models import build_model
files.save_torch(build_model("lenet", 10, 1, seed=1).state_dict(), sys.argv[1] + "/lenet_2.pt")
assert main(["reinit", "--arch", "lenet", "--dataset", "digits", "--load-from", sys.argv[1] + "/lenet_2.pt",
             "--rand", "--max-test-images", "64", "--eval-processes", "1", "--results", sys.argv[1],
             "--no-progress"]) == 0
print(sorted(m for m in sys.modules if m.split(".")[0] == "torchvision"))
print(sorted(m for m in sys.modules if m.startswith(("hparr.report", "matplotlib"))))
"""


def test_reinit_of_lenet_imports_no_torchvision_and_without_plots_no_report(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-2:] == ["[]", "[]"]
    assert list(tmp_path.rglob("reinit_lenet_2.json"))  # the command did run


CIFAR_SCRIPT = """
import sys
from hparr import files
from hparr.cli import main
from bench.fakedata import random_images, random_labels, write_cifar10
from hparr.models import build_model
root = sys.argv[1]
write_cifar10(root + "/data", random_images(10, 3, 32, 32, seed=1), random_labels(10, 10, seed=1),
              random_images(64, 3, 32, 32, seed=2), random_labels(64, 10, seed=2))
files.save_torch(build_model("lenet", 10, 3, seed=1).state_dict(), root + "/lenet_2.pt")
assert main(["reinit", "--arch", "lenet", "--dataset", "cifar10", "--data-path", root + "/data", "--load-from",
             root + "/lenet_2.pt", "--rand", "--eval-processes", "1", "--results", root, "--no-progress"]) == 0
print(sorted(m for m in sys.modules if m.split(".")[0] in ("pandas", "scipy", "matplotlib")
             or m.startswith("hparr.report")))
"""


def test_reinit_on_cifar_files_without_plots_imports_no_tables_statistics_or_figures(tmp_path):
    # start-up time of `reinit_weights.py` on CIFAR files: pandas, scipy and the report package (about 0.7 s)
    # are only imported where a table, a statistic or a plot is made, and the sweep makes none
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", CIFAR_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert list(tmp_path.rglob("reinit_lenet_2.json"))  # the command did run
