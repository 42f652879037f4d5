"""Docs that cannot drift: every name the docs' code imports exists, every `tsallis-rl` command they
show parses, and the ones a CPU can run do run at tiny sizes. Covers README.md, docs/*.md and
examples/. A code block preceded by `<!-- not-run: REASON -->` (hub models, GPUs, installs) is
parsed and import-checked but not run."""

from __future__ import annotations

import ast
import importlib
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tsallis_rl.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
EXAMPLES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "examples").rglob("*.py"))
SCRIPTS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "examples").rglob("*.sh"))


@dataclass
class Block:
    lang: str
    code: str
    line: int
    not_run: str | None  # the reason given in a preceding <!-- not-run: ... --> comment


def code_blocks(text: str) -> list[Block]:
    """Code blocks of a markdown text: fenced ones with their not-run marks, and indented ones
    (lang "indented": checked for imports and parsed, never run)."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            if lines[i].startswith("    ") and (i == 0 or not lines[i - 1].strip()):
                start, body = i, []
                while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                    body.append(lines[i][4:])
                    i += 1
                blocks.append(Block("indented", "\n".join(body).strip(), start + 1, "indented"))
                continue
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        prev = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
        mark = re.match(r"<!--\s*not-run:\s*(.*?)\s*-->", prev.strip())
        blocks.append(Block(fence.group(1), "\n".join(body), start + 1, mark and mark.group(1)))
        i += 1
    return blocks


def shell_commands(code: str) -> list[str]:
    """Commands of a shell block: continuation lines joined, comments and blank lines dropped."""
    out, pending = [], ""
    for raw in code.splitlines():
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        words = shlex.split(line, comments=True)
        if words:
            out.append(shlex.join(words))
    return out


def tsallis_imports(code: str) -> list[tuple[str, str | None]]:
    """(module, name) pairs the code imports from tsallis_rl (name None for `import module`)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:  # a fragment with `...`: fall back to the import lines alone
        lines = [ln for ln in code.splitlines() if re.match(r"\s*(from|import)\s+tsallis_rl", ln)]
        tree = ast.parse("\n".join(ln.split("#")[0].strip() for ln in lines))
    pairs: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tsallis_rl"):
            pairs += [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            pairs += [(a.name, None) for a in node.names if a.name.startswith("tsallis_rl")]
    return pairs


def _check_imports(pairs: list[tuple[str, str | None]], where: str) -> None:
    for module, name in pairs:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and not exc.name.startswith("tsallis_rl"):
                pytest.skip(f"{where}: needs {exc.name}")
            raise
        assert name is None or hasattr(mod, name), f"{where}: {module} has no {name}"


def _doc_blocks(doc: str) -> list[Block]:
    return code_blocks((ROOT / doc).read_text())


@pytest.mark.parametrize("doc", DOCS)
def test_every_name_the_docs_code_imports_exists(doc):
    for block in _doc_blocks(doc):
        if block.lang in ("python", "indented"):
            _check_imports(tsallis_imports(block.code), f"{doc}:{block.line}")


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_name_an_example_imports_exists(example):
    _check_imports(tsallis_imports((ROOT / example).read_text()), example)


@pytest.mark.parametrize("doc", DOCS)
def test_every_command_the_docs_show_parses(doc):
    """Flags and values of each `tsallis-rl` line are accepted by today's parser."""
    parser = build_parser()
    for block in _doc_blocks(doc):
        if block.lang not in ("bash", "sh", "shell", "console", "indented"):
            continue
        for cmd in shell_commands(block.code):
            words = shlex.split(cmd)
            if words[0] == "tsallis-rl" and "..." not in words:
                try:
                    parser.parse_args(words[1:])
                except SystemExit as exc:
                    pytest.fail(f"{doc}:{block.line}: `{cmd}` does not parse (exit {exc.code})")
            elif block.not_run is None and words[0] != "tsallis-rl":
                assert words[:2] == ["python", words[1]] and words[1].startswith("examples/"), (
                    f"{doc}:{block.line}: `{cmd}` is neither a tsallis-rl command nor an example; "
                    "mark its block <!-- not-run: REASON --> if it cannot run on a CPU"
                )


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_shell_scripts_are_valid_bash(script):
    proc = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


TINY = ["--steps", "1", "--val-size", "2", "--test-size", "2", "--eval-k", "2"]
TINY += ["--batch-size", "2", "--num-rollouts", "2", "--thinking-budget", "6"]
TINY += ["--answer-budget", "2", "--eval-every", "1", "--workers", "1", "--threads", "1"]
TINY += ["--progress", "false"]


def _runnable(doc: str) -> list[str]:
    return [
        cmd
        for block in _doc_blocks(doc)
        if block.lang in ("bash", "sh", "shell", "console") and block.not_run is None
        for cmd in shell_commands(block.code)
    ]


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS)
def test_the_commands_a_cpu_can_run_do_run_at_tiny_sizes(
    doc, tmp_path, monkeypatch, tiny_model_dir
):
    """Each runnable command, shrunk: train gets the tiny test model and one step, theory --quick."""
    monkeypatch.chdir(tmp_path)
    for cmd in _runnable(doc):
        words = shlex.split(cmd)
        if words[0] == "python":
            proc = subprocess.run(
                [sys.executable, str(ROOT / words[1]), *words[2:]],
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert proc.returncode == 0, f"{doc}: `{cmd}`\n{proc.stderr[-2000:]}"
            continue
        argv = words[1:]
        if argv[0] == "train":
            argv = [*argv, *(["--model", str(tiny_model_dir)] if "--model" not in argv else [])]
            argv += TINY
        if argv[0] == "theory" and "--quick" not in argv:
            argv.append("--quick")
        assert main(argv) == 0, f"{doc}: `{cmd}` failed"


@pytest.mark.slow
@pytest.mark.parametrize("example", [e for e in EXAMPLES if "argparse" in (ROOT / e).read_text()])
def test_example_help_shows_its_docstring_intact(example):
    source = (ROOT / example).read_text()
    doc = ast.get_docstring(ast.parse(source)) or ""
    proc = subprocess.run(
        [sys.executable, str(ROOT / example), "--help"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    first = doc.strip().splitlines()[0] if doc.strip() else ""
    assert first in proc.stdout, f"{example}: --help lost its docstring's first line {first!r}"
