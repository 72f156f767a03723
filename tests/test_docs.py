"""Every example of the documentation runs: each fenced code block whose info string is `python` in
README.md and docs/**/*.md is a test.

One test per page: its blocks run in order, in one namespace, in a temporary working directory.
A block preceded by the line `<!-- cudasim -->` needs a GPU: the page's marked blocks run instead,
in order and in one namespace of their own, in a child process with NUMBA_ENABLE_CUDASIM=1 (the
simulator must be chosen before Numba is imported, as in tests/test_cudasim.py). Nothing is
skipped. Errors point at the Markdown file and line of the failing statement.

`python -m tests.test_docs` prints how many blocks each page has.
"""
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
CUDASIM_MARK = "<!-- cudasim -->"
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


class Block(NamedTuple):
    path: Path
    line: int  # the line of the block's first code line, counted from 1
    code: str
    cudasim: bool


def pages():
    """README.md and every Markdown page under docs/, in a fixed order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(path):
    """The `python` blocks of a Markdown file, in order."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    found, i, previous = [], 0, ""
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        info = opening["info"].strip().split()
        end = i + 1
        while end < len(lines) and not re.match(rf"^[ \t]*{fence[0]}{{{len(fence)},}}[ \t]*$", lines[end]):
            end += 1
        if info and info[0] == "python":
            body = "\n".join(line[indent:] if line[:indent].strip() == "" else line for line in lines[i + 1:end])
            found.append(Block(Path(path), i + 2, textwrap.dedent(body) + "\n", previous == CUDASIM_MARK))
        previous = lines[i].strip()
        i = end + 1
    return found


def _source(block):
    """The block's code placed at its line of the Markdown file, for tracebacks that point there."""
    return "\n" * (block.line - 1) + block.code


def _name(path):
    return str(Path(path).relative_to(ROOT))


PAGES = [page for page in pages() if blocks(page)]

# Runs a page's CUDA blocks in the child: each (file, code) compiled under the Markdown file's name.
_CHILD = """
import json, sys
namespace = {"__name__": "__doc_example__"}
sources = json.load(sys.stdin)
for filename, source in sources:
    exec(compile(source, filename, "exec"), namespace)
print(len(sources))
"""


def _run_in_simulator(cudasim, cwd):
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("NBCONV_BACKEND", None)
    payload = json.dumps([[str(block.path), _source(block)] for block in cudasim])
    result = subprocess.run([sys.executable, "-c", _CHILD], input=payload, cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return int(result.stdout.split()[-1])


@pytest.mark.parametrize("page", PAGES, ids=[_name(page) for page in PAGES])
def test_page_examples_run(page, tmp_path, monkeypatch):
    """All `python` blocks of one page: the host ones here, the `<!-- cudasim -->` ones in a child."""
    found = blocks(page)
    host = [block for block in found if not block.cudasim]
    cudasim = [block for block in found if block.cudasim]
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__doc_example__"}
    ran = 0
    for block in host:
        exec(compile(_source(block), str(block.path), "exec"), namespace)
        ran += 1
    if cudasim:
        ran += _run_in_simulator(cudasim, tmp_path)
    assert ran == len(found) > 0
    print(f"{_name(page)}: {ran} blocks ran ({len(cudasim)} in the CUDA simulator)")


def test_block_count():
    """How many examples the documentation has, all run by the test above: README.md and at least
    the pages that teach the API have some, and every `<!-- cudasim -->` mark precedes a block."""
    counts = {_name(page): len(blocks(page)) for page in pages()}
    total = sum(counts.values())
    print(f"{total} python blocks on {sum(1 for n in counts.values() if n)} pages "
          f"({sum(block.cudasim for page in pages() for block in blocks(page))} in the CUDA simulator)")
    expected = ["README.md", "docs/index.md", "docs/getting-started.md", "docs/semantics.md", "docs/layers.md",
                "docs/gradients.md", "docs/volumes.md", "docs/gpu.md", "docs/threads.md"]
    assert all(counts.get(name, 0) > 0 for name in expected), counts
    for page in pages():
        marks = Path(page).read_text(encoding="utf-8").count(CUDASIM_MARK)
        assert marks == sum(block.cudasim for block in blocks(page)), f"{_name(page)}: a mark without a block"


def test_docstring_examples():
    """The API reference shows the public docstrings' examples: they run too."""
    import doctest

    import nbconv.functional

    result = doctest.testmod(nbconv.functional, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0, result


if __name__ == "__main__":
    for page in pages():
        found = blocks(page)
        print(f"{_name(page):<28}{len(found):>3} blocks{sum(b.cudasim for b in found):>3} under the simulator")
    print(f"{'total':<28}{sum(len(blocks(page)) for page in pages()):>3}")
