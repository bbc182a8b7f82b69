"""The `qa` command line fails in one line: a bad argument is found before anything slow starts,
named on stderr, exit status 2, no traceback (`qa -v` adds it)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qa.cli import main

# Run in a fresh interpreter: the exit status, stderr, and whether anything slow (torch) was loaded.
PROBE = """
import sys
from qa.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:  # argparse's errors
    code = e.code
print("torch loaded" if "torch" in sys.modules else "torch not loaded")
sys.exit(code)
"""


def _qa(*args, cwd=None):
    return subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=cwd or Path(__file__).anchor)


def _one_line_error(run, prog, *needles):
    assert run.returncode == 2, (run.returncode, run.stdout, run.stderr)
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: "), run.stderr
    assert "Traceback" not in run.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.mark.parametrize("args, needle", [
    (["--param-bw", "0"], "argument --param-bw: a bitwidth must be from 2 to 32, got 0"),
    (["--param-bw", "1"], "got 1"),
    (["--param-bw", "33"], "got 33"),
    (["--param-bw", "-3"], "got -3"),
    (["--output-bw", "64"], "argument --output-bw: a bitwidth must be from 2 to 32, got 64"),
    (["--param-bw", "four"], "a bitwidth must be a whole number, got 'four'"),
    (["--mse-batches", "0"], "argument --mse-batches: must be at least 1, got 0"),
])
def test_demo_argument_errors_come_first_in_one_line(tmp_path, args, needle):
    run = _qa("demo", "--out", tmp_path / "out", *args)
    _one_line_error(run, "qa demo", needle)
    assert run.stdout.strip() == "torch not loaded"  # found before anything slow started
    assert not (tmp_path / "out").exists()


def test_demo_param_bw_is_checked_not_replaced_by_the_default(tmp_path, capsys):
    """`--param-bw 0` ran with the default 4 bits (args.param_bw or PARAM_BW)."""
    with pytest.raises(SystemExit) as info:
        main(["demo", "--param-bw", "0", "--out", str(tmp_path / "out")])
    assert info.value.code == 2
    assert "got 0" in capsys.readouterr().err


def test_demo_out_that_is_a_file_fails_before_torch_loads(tmp_path):
    f = tmp_path / "results"
    f.write_text("a file")
    run = _qa("demo", "--out", f)
    _one_line_error(run, "qa demo", f"--out {f} is a file, not a folder")
    assert run.stdout.strip() == "torch not loaded"
    assert f.read_text() == "a file"


def test_report_on_a_file_or_a_missing_folder(tmp_path):
    f = tmp_path / "summary.json"
    f.write_text("{}")
    run = _qa("report", f)
    _one_line_error(run, "qa report", f"{f} is a file; qa report takes the results folder")
    missing = tmp_path / "missing"
    run = _qa("report", missing)
    assert _one_line_error(run, "qa report") == f"qa report: no qa results in {missing}: there is no such folder"
    assert not missing.exists()  # it used to be created, empty


def test_report_on_an_empty_or_damaged_folder(tmp_path):
    run = _qa("report", tmp_path)
    _one_line_error(run, "qa report", "no qa results in")
    (tmp_path / "summary.json").write_text('{"layers": 5}')
    run = _qa("report", tmp_path)
    assert _one_line_error(run, "qa report") == "qa report: summary.json: layers: 5 is not of type 'array'"
    (tmp_path / "summary.json").write_text('{"layers": [')
    _one_line_error(_qa("report", tmp_path), "qa report", "summary.json: not valid JSON")


def test_verbose_adds_the_traceback(tmp_path):
    (tmp_path / "summary.json").write_text('{"layers": 5}')
    run = _qa("-v", "report", tmp_path)
    assert run.returncode == 2 and "Traceback" in run.stderr
    assert run.stderr.splitlines()[-1] == "qa report: summary.json: layers: 5 is not of type 'array'"


@pytest.mark.parametrize("args, needle", [
    (["--elements", "0"], "argument --elements: must be at least 1, got 0"),
    (["--elements", "-5"], "got -5"),
    (["--seed", "-1"], "argument --seed: must be at least 0, got -1"),
])
def test_selfcheck_argument_errors(args, needle):
    _one_line_error(_qa("selfcheck", *args), "qa selfcheck", needle)


def test_selfcheck_still_runs(capsys):
    assert main(["selfcheck", "--elements", "5000"]) == 0
    assert "all checks passed" in capsys.readouterr().out


def test_unknown_command_and_missing_argument_are_one_line():
    _one_line_error(_qa("report"), "qa report", "the following arguments are required: results_dir")
    _one_line_error(_qa("frobnicate"), "qa", "invalid choice")


def test_errors_in_process_return_2_without_raising(tmp_path, capsys):
    (tmp_path / "summary.json").write_text(json.dumps({"per_layer_quant_enabled": [1, 2]}))
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("qa report: summary.json: per_layer_quant_enabled: [1, 2] is not of type "
                                       "'object'\n")
