"""The README's Python snippet runs as printed (smaller: fewer digits, references and epochs),
so the front door cannot rot."""

from __future__ import annotations

import os
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
MARK = "<!-- python: run by tests/test_readme.py -->"
# The snippet's sizes (each said once), shrunk so that it runs in seconds; every other
# character runs as printed.
SMALLER = {"images[:2000], mnist.train.labels[:2000]": "images[:240], mnist.train.labels[:240]",
           "num_references=8": "num_references=2", "epochs=30": "epochs=2",
           "batch_size=64": "batch_size=32"}


def snippet() -> str:
    text = README.read_text()
    assert text.count(MARK) == 1, "the README's Python snippet lost its marker"
    block = re.search(r"```python\n(.*?)```", text[text.index(MARK):], re.S)
    assert block is not None
    return block.group(1)


def test_the_readmes_python_snippet_runs(capsys):
    data = pathlib.Path(os.environ.get("JAXPET_DATA_DIR", "../shared/data"))
    if not (data / "mnist").exists():
        pytest.skip(f"needs MNIST under {data}")
    code = snippet()
    for printed, smaller in SMALLER.items():
        assert code.count(printed) == 1, f"the snippet no longer says {printed}"
        code = code.replace(printed, smaller)
    code = code.replace('"../shared/data"', repr(str(data)))
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # the README's own code
    result = namespace["result"]
    out = capsys.readouterr().out
    assert "| lira_online |" in out and "'attack': 'lira_online'" in out
    assert set(result.table) >= {"lira_online", "rmia_online", "global_loss"}
    assert result.membership.sum() == 120 and len(result.scores["lira_online"]) == 240
    assert type(namespace["figure"]).__name__ == "Figure" and result.workdir is None
