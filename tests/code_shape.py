"""How the collection's code is measured: changed code lines between two files, and top-level definitions.

Used by tests/test_variants.py (a variant's budget of changed lines against its base) and
tests/test_drift.py (one helper name, one body). Also a command:

    python tests/code_shape.py changed algorithms/ppo.py algorithms/ppo_atari.py   # changed code lines
    python tests/code_shape.py drift                                                # shared names that differ
"""

from __future__ import annotations

import ast
import difflib
import io
import sys
import tokenize
from collections import defaultdict
from pathlib import Path

ALGORITHMS = Path(__file__).resolve().parents[1] / "algorithms"


def code_lines(source: str) -> list[str]:
    """The lines that count as code: comments, blank lines and standalone string literals (module, class and
    function docstrings, the one-line docstrings under dataclass fields) are left out. Indentation is kept."""
    skip: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            skip.update(range(node.lineno, node.end_lineno + 1))
    lines = source.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            row, col = tok.start
            lines[row - 1] = lines[row - 1][:col]
    return [line.rstrip() for i, line in enumerate(lines, start=1) if i not in skip and line.strip()]


def changed_lines(base: str, variant: str) -> int:
    """For each differing hunk of a line diff of the code lines, the larger of lines removed and lines added."""
    opcodes = difflib.SequenceMatcher(None, code_lines(base), code_lines(variant), autojunk=False).get_opcodes()
    return sum(max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in opcodes if tag != "equal")


def top_level_definitions(source: str) -> dict[str, str]:
    """Each top-level function and class: name -> its source as ast.unparse writes it (comments and layout
    normalised away; docstrings, decorators, signature and body kept)."""
    return {node.name: ast.unparse(node) for node in ast.parse(source).body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}


def definition_groups(files: list[Path]) -> dict[str, list[list[str]]]:
    """For each name defined in two or more files: the files grouped by identical source, largest group first."""
    by_name: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in files:
        for name, src in top_level_definitions(path.read_text()).items():
            by_name[name][src].append(path.name)
    groups = {}
    for name, variants in by_name.items():
        if sum(len(v) for v in variants.values()) >= 2:
            groups[name] = sorted((sorted(v) for v in variants.values()), key=lambda g: (-len(g), g))
    return groups


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "changed":
        print(changed_lines(Path(sys.argv[2]).read_text(), Path(sys.argv[3]).read_text()))
    elif len(sys.argv) == 2 and sys.argv[1] == "drift":
        for name, groups in sorted(definition_groups(sorted(ALGORITHMS.glob("*.py"))).items()):
            if len(groups) > 1:
                print(f"{name}: " + " | ".join(" ".join(g) for g in groups))
    else:
        sys.exit("usage: code_shape.py changed BASE VARIANT | code_shape.py drift")
