"""Every benchmark script parses its command line, so `--help` or a misspelt option never
runs a benchmark and overwrites its recorded result."""

import ast
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("bench_*.py"))


def test_every_benchmark_script_has_a_row_in_the_readme():
    readme = (BENCHMARKS / "README.md").read_text()
    rows = {line.split("`")[1].split()[0] for line in readme.splitlines() if line.startswith("| `bench_")}
    scripts = {p.stem for p in SCRIPTS}
    assert scripts, "no benchmarks/bench_*.py found"
    assert scripts - rows == set(), "benchmark scripts without a row (question and result) in benchmarks/README.md"
    assert rows - scripts == set(), "README rows naming a benchmark script that does not exist"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_main_parses_its_arguments(script):
    tree = ast.parse(script.read_text())
    mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    assert mains, f"{script.name} has no main()"
    calls = [n for n in ast.walk(mains[0]) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
    assert any(c.func.attr in ("parse_args", "parse_known_args") for c in calls), (
        f"{script.name}: main() never parses its arguments, so `--help` runs the benchmark")
