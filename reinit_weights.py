#!/usr/bin/env python3
"""`python reinit_weights.py ...` runs `hparr reinit ...` (the paper's script name)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))
from hparr.cli import script_main  # noqa: E402

script_main("reinit")
