"""Every ```python block of README.md and docs/*.md runs, and prints what its comments say.

Conventions (docs/contributing_docs.md, "Code blocks"):

- a block is a complete program, run in a fresh namespace with a fresh temporary working directory;
- a block directly preceded by a line ``<!-- continue -->`` continues the previous block of the same
  page (same namespace, same directory);
- ``# prints: <text>`` on a line of a top-level statement checks what that statement printed: its lines
  joined with `` / ``; a trailing `` ...`` makes ``<text>`` a prefix.

The blocks of one page run in one subprocess (CPU, ``HF_HUB_OFFLINE=1``, one thread), which this file
also is: ``python tests/test_doc_blocks.py PAYLOAD.json`` runs the programs listed in the payload.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONTINUE = "<!-- continue -->"
PRINTS = re.compile(r"#\s*prints:\s*(.*?)\s*$")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
TIMEOUT_S = 300  # all pages together
SLOW_BLOCK_S = 8.0  # CPU seconds one block may take


@dataclass
class Block:
    page: str
    line: int  # 1-based line of the first code line
    code: str
    continues: bool


@dataclass
class Program:
    """One block and the blocks that continue it: run in one namespace."""

    page: str
    blocks: list[Block] = field(default_factory=list)


def extract(text: str, page: str) -> list[Block]:
    """The ```python blocks of a Markdown text, with their line numbers and continuation marks."""
    lines = text.split("\n")
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, language = match.groups()
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence[0] * len(fence)):
            end += 1
        if end == len(lines):
            raise ValueError(f"{page}:{i + 1}: the code fence {fence!r} is never closed")
        if language == "python":
            body = [line[len(indent) :] if line.startswith(indent) else line for line in lines[i + 1 : end]]
            continues = i > 0 and lines[i - 1].strip() == CONTINUE
            blocks.append(Block(page, i + 2, "\n".join(body) + "\n", continues))
        elif i > 0 and lines[i - 1].strip() == CONTINUE:
            raise ValueError(f"{page}:{i + 1}: {CONTINUE} must precede a ```python block, not ```{language}")
        i = end + 1
    return blocks


def programs(blocks: list[Block]) -> list[Program]:
    out: list[Program] = []
    for block in blocks:
        if block.continues:
            if not out:
                raise ValueError(f"{block.page}:{block.line}: {CONTINUE} before the first python block of the page")
            out[-1].blocks.append(block)
        else:
            out.append(Program(block.page, [block]))
    return out


def expected_prints(code: str) -> dict[int, tuple[int, str]]:
    """``{first line of a top-level statement: (line of the comment, expected text)}`` of a block."""
    tree = ast.parse(code)
    comments = {n: m.group(1) for n, line in enumerate(code.split("\n"), 1) if (m := PRINTS.search(line))}
    out: dict[int, tuple[int, str]] = {}
    for statement in tree.body:
        inside = [n for n in comments if statement.lineno <= n <= statement.end_lineno]
        if len(inside) > 1:
            raise ValueError(f"line {statement.lineno}: one '# prints:' comment per statement, found {len(inside)}")
        if inside:
            out[statement.lineno] = (inside[0], comments[inside[0]])
    orphans = set(comments) - {line for line, _ in out.values()}
    if orphans:
        raise ValueError(f"'# prints:' comments outside any statement, lines {sorted(orphans)}")
    return out


def matches(printed: str, expected: str) -> bool:
    if expected.endswith(" ..."):
        return printed.startswith(expected[:-4])
    return printed == expected


# --- the subprocess side ------------------------------------------------------------------------


class _Recorder(io.TextIOBase):
    """stdout that attributes each write to the top-level statement of the block being run."""

    def __init__(self, filename: str, starts: list[int]) -> None:
        self.filename, self.starts, self.text = filename, starts, {}

    def _statement(self) -> int | None:
        frame, line = sys._getframe(1), None
        while frame is not None:
            if frame.f_code.co_filename == self.filename:
                line = frame.f_lineno  # keep going: the outermost frame of the block is the statement's
            frame = frame.f_back
        if line is None:
            return None
        return max((s for s in self.starts if s <= line), default=None)

    def write(self, s: str) -> int:
        key = self._statement()
        self.text[key] = self.text.get(key, "") + s
        return len(s)


def run_payload(path: str) -> None:
    payload = json.loads(Path(path).read_text())
    if payload["preimport"]:
        # What nearly every block imports, imported once up front so that no block is charged for it.
        import torch  # noqa: F401

        import smp3d  # noqa: F401

    results = []
    real_stdout = sys.stdout
    for program in payload["programs"]:
        namespace: dict = {"__name__": "__main__"}
        workdir = tempfile.mkdtemp(prefix="docblock-", dir=Path(path).parent)  # removed with the test's tmp_path
        os.chdir(workdir)
        outcome = {"blocks": []}
        for block in program["blocks"]:
            filename = f"<{block['page']}:{block['line']}>"
            try:
                tree = ast.parse(block["code"], filename)
            except SyntaxError:
                outcome["blocks"].append({"printed": {}, "error": traceback.format_exc(), "cpu_s": 0.0})
                break
            recorder = _Recorder(filename, [s.lineno for s in tree.body])
            sys.stdout = recorder
            error = None
            started = time.process_time()
            try:
                exec(compile(tree, filename, "exec"), namespace)
            except BaseException:  # noqa: BLE001 - reported to the test
                error = traceback.format_exc()
            finally:
                sys.stdout = real_stdout
            printed = {str(k): v for k, v in recorder.text.items()}
            outcome["blocks"].append({"printed": printed, "error": error, "cpu_s": time.process_time() - started})
            if error:
                break
        results.append(outcome)
    Path(payload["out"]).write_text(json.dumps(results))


# --- the tests ----------------------------------------------------------------------------------


def _pages_with_blocks() -> list[Path]:
    return [page for page in PAGES if extract(page.read_text(), page.name)]


def run_pages(pages: dict[str, str], tmp_path: Path, preimport: bool = True) -> dict[str, list[str]]:
    """Run the programs of the pages ``{name: markdown}`` in one subprocess (torch is imported once);
    ``{name: failures}``, each list empty when the page passes."""
    progs = [program for name, text in pages.items() for program in programs(extract(text, name))]
    payload = {
        "programs": [{"blocks": [asdict(b) for b in p.blocks]} for p in progs],
        "out": str(tmp_path / "out.json"),
        "preimport": preimport,
    }
    (tmp_path / "payload.json").write_text(json.dumps(payload))
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",
        MPLBACKEND="Agg",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    done = subprocess.run(
        [sys.executable, __file__, str(tmp_path / "payload.json")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    failures: dict[str, list[str]] = {name: [] for name in pages}
    if done.returncode != 0:
        message = f"the block runner failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
        return {name: [message] for name in pages}
    for program, outcome in zip(progs, json.loads((tmp_path / "out.json").read_text()), strict=True):
        for block, result in zip(program.blocks, outcome["blocks"], strict=False):
            where = f"{block.page}:{block.line}"
            if result["error"]:
                failures[block.page].append(
                    f"{where}: the block raised\n{textwrap.indent(result['error'][-2500:], '    ')}"
                )
                break
            if result["cpu_s"] > SLOW_BLOCK_S:
                failures[block.page].append(
                    f"{where}: the block took {result['cpu_s']:.1f} s of CPU (limit {SLOW_BLOCK_S} s): make it smaller"
                )
            for start, (comment_line, expected) in expected_prints(block.code).items():
                printed = " / ".join(result["printed"].get(str(start), "").rstrip("\n").split("\n"))
                if not matches(printed, expected):
                    failures[block.page].append(
                        f"{block.page}:{block.line + comment_line - 1}: '# prints: {expected}' "
                        f"but the statement printed {printed!r}"
                    )
    return failures


def test_blocks_run_and_print_what_they_say(tmp_path: Path) -> None:
    """All pages in one subprocess (one torch import; one test, so xdist does not repeat the run per worker)."""
    pages = {str(page.relative_to(ROOT)): page.read_text() for page in _pages_with_blocks()}
    assert "README.md" in pages and "docs/index.md" in pages
    failures = [f for page_failures in run_pages(pages, tmp_path).values() for f in page_failures]
    assert not failures, "\n\n".join(failures)


def test_every_page_is_covered() -> None:
    """README.md and every docs page are read; a python fence spelled differently is not missed."""
    assert {p.name for p in PAGES} >= {"README.md", "index.md"}
    for page in PAGES:
        text = page.read_text()
        spelled = len(re.findall(r"^\s*(?:```|~~~)\s*(?:python|py|python3|pycon)\b", text, re.M))
        assert spelled == len(extract(text, page.name)), f"{page.name}: use ```python for Python blocks"


def test_checker_catches_wrong_prints_and_errors(tmp_path: Path) -> None:
    page = textwrap.dedent(
        """
        ```python
        x = 2
        print(x + 1)  # prints: 3
        print("a")
        print("b")  # prints: c
        ```

        <!-- continue -->
        ```python
        for i in range(2):
            print(i * x)  # prints: 0 / 2
        print("long text here")  # prints: long ...
        ```

        ```python
        print(x)  # a fresh program: x is undefined here
        ```
        """
    )
    failures = run_pages({"fake.md": page}, tmp_path, preimport=False)["fake.md"]
    assert len(failures) == 2, failures
    assert "fake.md:6: '# prints: c' but the statement printed 'b'" in failures[0]
    assert "fake.md:17: the block raised" in failures[1] and "NameError" in failures[1]


def test_continue_marker_needs_a_previous_block() -> None:
    with pytest.raises(ValueError, match="before the first python block"):
        programs(extract("<!-- continue -->\n```python\nx = 1\n```\n", "p.md"))


if __name__ == "__main__":
    run_payload(sys.argv[1])
