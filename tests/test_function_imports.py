"""An import inside a function says why it is not at the top of its module (start-up time, an optional extra, an
import cycle): a comment on its line, or on the line above it, or on another line of the run of imports it
belongs to."""
from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "hparr"


def unexplained(source: str) -> list[tuple[int, str]]:
    """(line, text) of each import inside a function of `source` whose run of consecutive import statements has no
    comment, on its lines or on the line just above it."""
    lines = source.splitlines()
    comments = {token.start[0] for token in tokenize.generate_tokens(io.StringIO(source).readline)
                if token.type == tokenize.COMMENT}
    imports = {node for function in ast.walk(ast.parse(source))
               if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
               for node in ast.walk(function) if isinstance(node, (ast.Import, ast.ImportFrom))}
    runs: list[list[ast.stmt]] = []
    for node in sorted(imports, key=lambda n: n.lineno):
        if runs and node.lineno == runs[-1][-1].end_lineno + 1:
            runs[-1].append(node)
        else:
            runs.append([node])
    return [(node.lineno, lines[node.lineno - 1].strip()) for run in runs
            if not comments & set(range(run[0].lineno - 1, run[-1].end_lineno + 1)) for node in run]


def test_the_rule_finds_a_function_level_import_without_a_reason():
    source = '''import os


def explained():
    import json  # start-up time

    # an optional extra
    import onnx
    from onnx import helper

    try:
        import timm  # optional extra
        from timm import layers
    except ImportError:
        pass


def unexplained():
    """A docstring is no reason."""
    import difflib

    from . import files
    return os, json, onnx, helper, timm, layers, difflib, files


class Model:
    def forward(self):
        def inner():
            import math
            return math
        return inner
'''
    assert unexplained(source) == [(20, "import difflib"), (22, "from . import files"), (29, "import math")]


def test_every_function_level_import_of_hparr_says_why():
    found = [f"{path.relative_to(SRC.parent)}:{line}: {text}" for path in sorted(SRC.rglob("*.py"))
             for line, text in unexplained(path.read_text())]
    assert not found, "function-level imports without a reason (move them to the top, or say why not):\n" + \
        "\n".join(found)
