"""Run the paper's original `reinit_layers.py` from a folder of its code, unchanged, with current torch and torchvision:
`python bench/original_launcher.py ORIGINAL_DIR [its arguments...]`.

Its files are not edited: this script applies three patches at run time (two for current torch and torchvision, one
to read its own DataParallel snapshots), then runs the script as `__main__`. The patches only let it run; it still
evaluates the whole network for each layer and alternative, as written.
"""
from __future__ import annotations

import os
import runpy
import sys


def patch() -> None:
    import torch
    import torchvision.datasets.cifar as cifar

    # the bench's CIFAR-format files are not the official files: skip torchvision's md5 checks, which would fail
    # and make CIFAR10(download=True) try to download the official archive
    cifar.check_integrity = lambda *args, **kwargs: True

    # current torch keeps the transposed layout of `pred.t()` in `eq`'s result, so scores.evaluate's
    # `correct[:5].view(-1)` raises; the torch it was written for returned a contiguous tensor (same values)
    eq = torch.Tensor.eq
    torch.Tensor.eq = lambda self, other: eq(self, other).contiguous()

    # its train.py wraps `features` in DataParallel on several GPUs, so its .tar snapshots hold
    # `features.module.` keys, which its own snapshot.load_model cannot load into the unwrapped model
    load = torch.load

    def load_unwrapped(*args, **kwargs):
        obj = load(*args, **kwargs)
        if isinstance(obj, dict) and isinstance(obj.get("model_state_dict"), dict):
            obj["model_state_dict"] = {".".join(p for p in key.split(".") if p != "module"): value
                                       for key, value in obj["model_state_dict"].items()}
        return obj

    torch.load = load_unwrapped


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: python bench/original_launcher.py ORIGINAL_DIR [reinit_layers.py arguments...]")
    folder = os.path.abspath(argv[0])
    script = os.path.join(folder, "reinit_layers.py")
    patch()
    # its modules (data_loader, models, snapshot, ...) import each other by name: its folder first, as
    # `python reinit_layers.py` would have it, and not this script's folder
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [folder, *(p for p in sys.path if os.path.abspath(p or os.curdir) != here)]
    sys.argv = [script, *argv[1:]]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
