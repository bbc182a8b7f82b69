"""ResultsDir: a results folder nothing in it can abuse (planted links, hard links, odd paths).

A folder received as a tarball or from git can hold links where qa writes or reads; qa must
never write through them, read through them, or leave a half-written file behind.
"""

import errno
import json
import logging
import os
import sys
import threading

import pytest

import qa
from qa.errors import QAError, QAValueError
from qa.report import ResultsDir, sanitize

needs_links = pytest.mark.skipif(sys.platform == "win32", reason="symbolic links need privileges on Windows")


@pytest.fixture
def outside(tmp_path):
    """A folder beside the results folder, with files that must stay as they are."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "victim.txt").write_text("precious")
    (folder / "hard.txt").write_text("precious too")
    return folder


def _tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _temps(root):
    return [p for p in root.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]


@needs_links
def test_links_planted_at_the_old_temp_name_are_never_written_through(tmp_path, outside):
    root = tmp_path / "results"
    root.mkdir()
    (root / ".summary.json.tmp").symlink_to(outside / "victim.txt")
    os.link(outside / "hard.txt", root / ".per_layer_quant_enabled.json.tmp")
    before = _tree(outside)
    out = ResultsDir(root)
    out.write_json({"status": "complete"}, "summary.json")
    out.write_json({"conv1": 0.5}, "per_layer_quant_enabled.json")
    assert _tree(outside) == before
    assert json.loads((root / "summary.json").read_text()) == {"status": "complete"}


@needs_links
def test_a_link_or_hard_link_at_the_target_is_replaced_not_followed(tmp_path, outside):
    root = tmp_path / "results"
    (root / "min_max_ranges").mkdir(parents=True)
    (root / "summary.json").symlink_to(outside / "victim.txt")
    os.link(outside / "hard.txt", root / "min_max_ranges" / "weights.json")
    before = _tree(outside)
    out = ResultsDir(root)
    out.write_json({"a": 1}, "summary.json")
    out.write_json({"conv1_weight": [-1, 1]}, "min_max_ranges", "weights.json")
    out.write_bytes(b"\x89PNG", root / "summary.json")  # the write_bytes of chart exports: the same path
    assert _tree(outside) == before
    for path in (root / "summary.json", root / "min_max_ranges" / "weights.json"):
        assert not path.is_symlink() and path.stat().st_nlink == 1


@needs_links
@pytest.mark.parametrize("inside", [False, True])
def test_a_linked_subfolder_is_refused_naming_it(tmp_path, outside, inside):
    root = tmp_path / "results"
    root.mkdir()
    (root / "activations_pdf").mkdir()
    target = root / "activations_pdf" if inside else outside
    (root / "min_max_ranges").symlink_to(target, target_is_directory=True)
    before = _tree(outside)
    out = ResultsDir(root)
    with pytest.raises(QAError, match=r"refusing .*min_max_ranges: it is a symbolic link"):
        out.write_json({"a": [0, 1]}, "min_max_ranges", "activations.json")
    with pytest.raises(QAError, match=r"min_max_ranges: it is a symbolic link"):
        out.read_json("min_max_ranges/activations.json")
    assert _tree(outside) == before and not list((root / "activations_pdf").iterdir())


def test_a_failed_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    out = ResultsDir(tmp_path)
    out.write_json({"old": 1}, "summary.json")

    def disk_full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(QAError, match=r"^cannot write .*summary.json: No space left on device$"):
        out.write_json({"new": 2}, "summary.json")
    monkeypatch.undo()
    assert not _temps(tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text()) == {"old": 1}  # the old file, whole


@pytest.mark.skipif(sys.platform == "win32", reason="needs RLIMIT_FSIZE and SIGXFSZ")
def test_a_write_past_the_file_size_limit_leaves_no_partial_file(tmp_path):
    """A real short write (RLIMIT_FSIZE, as a full disk), not a mock: the old code left .x.tmp behind."""
    resource = pytest.importorskip("resource")
    import signal

    out = ResultsDir(tmp_path)
    old_signal = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(QAError, match="cannot write .*big.json"):
            out.write_json({"x": "y" * 100_000}, "big.json")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_signal)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_two_writers_in_one_folder_do_not_collide(tmp_path):
    out_a, out_b = ResultsDir(tmp_path), ResultsDir(tmp_path)
    errors = []

    def write(out, tag):
        try:
            for i in range(150):
                out.write_json({"writer": tag, "i": i}, "summary.json")
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=write, args=(out, tag)) for out, tag in ((out_a, "a"), (out_b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert json.loads((tmp_path / "summary.json").read_text())["i"] == 149 and not _temps(tmp_path)


def test_written_files_have_the_usual_mode(tmp_path):
    if sys.platform == "win32":
        pytest.skip("POSIX modes")
    mask = os.umask(0o022)
    os.umask(mask)
    path = ResultsDir(tmp_path).write_json({}, "summary.json")
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0o600: results are shared


@pytest.mark.parametrize("value, message", [
    (None, "results_dir must be a folder path, got NoneType"),
    (5, "results_dir must be a folder path, got int"),
    (b"/tmp/x", "results_dir must be a folder path, got bytes"),
    ("", "results_dir is empty: name a folder"),
    ("/tmp/a\0b", "results_dir '/tmp/a\\x00b' contains a NUL character"),
])
def test_results_dir_must_be_a_folder_path(value, message):
    with pytest.raises(QAValueError) as info:
        ResultsDir(value)
    assert str(info.value) == message and isinstance(info.value, ValueError)


def test_results_dir_that_is_a_file_is_refused_before_any_work(tmp_path):
    f = tmp_path / "f"
    f.write_text("not a folder")
    with pytest.raises(QAValueError) as info:
        ResultsDir(f)
    assert str(info.value) == f"results_dir {str(f)!r} is a file, not a folder"
    assert f.read_text() == "not a folder"
    with pytest.raises(QAError, match="there is no such folder"):
        ResultsDir(tmp_path / "missing", create=False)
    assert not (tmp_path / "missing").exists()


def test_sanitized_names_are_unique_per_name():
    names = ["a-b", "a_b", "a.b", "a b", "a__b", "a/b", "A_B"]
    assert len({sanitize(n) for n in names}) == len(names)
    assert sanitize("a_b") == "a_b" and sanitize("A_B") == "A_B" and sanitize("a-b").startswith("a_b_")
    assert all(sanitize(sanitize(n)) == sanitize(n) for n in names)  # a file name maps to itself


def test_remove_deletes_one_regular_file_inside_and_nothing_else(tmp_path, outside, caplog):
    out = ResultsDir(tmp_path / "results")
    out.write_json({}, "weights_pdf", "conv1", "weight.json")
    out.write_json({}, "summary.json")
    assert out.remove("weights_pdf/conv1/weight.json") is True
    assert not (out.root / "weights_pdf").exists()  # folders it leaves empty go too
    assert out.remove("weights_pdf/conv1/weight.json") is False  # missing: fine
    assert out.remove("summary.json") is True and not (out.root / "summary.json").exists()
    with caplog.at_level(logging.WARNING, logger="qa"):
        for rel in ("../outside/victim.txt", str(outside / "victim.txt"), "", "a/../../x", "a\0b"):
            assert out.remove(rel) is False, rel
    if sys.platform != "win32":
        (out.root / "link.json").symlink_to(outside / "victim.txt")
        (out.root / "dir").symlink_to(outside, target_is_directory=True)
        assert out.remove("link.json") is False and (out.root / "link.json").is_symlink()
        assert out.remove("dir/victim.txt") is False
    assert (outside / "victim.txt").read_text() == "precious"


def test_read_json_reads_regular_files_inside_only(tmp_path, outside):
    out = ResultsDir(tmp_path / "results")
    assert out.read_json("summary.json") is None
    out.write_json({"a": float("inf")}, "summary.json")
    assert out.read_json("summary.json") == {"a": None}
    (out.root / "bad.json").write_text('{"a": ')
    with pytest.raises(QAError, match=r"^bad.json: not valid JSON"):
        out.read_json("bad.json")
    (out.root / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(QAError, match=r"^deep.json: nested too deeply"):
        out.read_json("deep.json")
    (out.root / "latin1.json").write_bytes(b'{"a": "\xe9"}')
    with pytest.raises(QAError, match=r"^latin1.json: not UTF-8"):
        out.read_json("latin1.json")
    (out.root / "folder.json").mkdir()
    with pytest.raises(QAError, match="folder.json is not a regular file"):
        out.read_json("folder.json")
    with pytest.raises(QAError, match="outside the results folder"):
        out.read_json(outside / "victim.txt")
    if sys.platform != "win32":
        (out.root / "link.json").symlink_to(outside / "victim.txt")
        with pytest.raises(QAError, match="link.json is a symbolic link"):
            out.read_json("link.json")
    assert qa.report.MAX_READ_BYTES == 256 * 2**20
