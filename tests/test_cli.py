"""The lmpress command end to end, through subprocess, with the tiny test model."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time

import pytest
from conftest import TRAINING_TEXT, run

TEXT = TRAINING_TEXT.encode()[:3000] + bytes(range(256))


@pytest.fixture
def work(tmp_path, tiny_model_dir):
    (tmp_path / "a.txt").write_bytes(TEXT)
    return tmp_path, ["--model", tiny_model_dir]


def test_compress_decompress_keeps_input_and_refuses_to_overwrite(work):
    d, model = work
    r = run("compress", "-v", "--chunk-size", "500", *model, d / "a.txt")
    assert r.returncode == 0, r.stderr
    assert b"bits/byte" in r.stderr and (d / "a.txt").exists() and (d / "a.txt.lmp").exists()
    r = run("decompress", *model, d / "a.txt.lmp")
    assert r.returncode == 1 and b"already exists" in r.stderr and b"Traceback" not in r.stderr
    r = run("decompress", "-f", "--rm", *model, d / "a.txt.lmp")
    assert r.returncode == 0, r.stderr
    assert (d / "a.txt").read_bytes() == TEXT and not (d / "a.txt.lmp").exists()
    assert sorted(p.name for p in d.iterdir()) == ["a.txt"]  # no temporary files left


def test_pipes_output_option_verify_test_and_list(work):
    d, model = work
    r = run("compress", "--verify", "-o", d / "out.lmp", *model, d / "a.txt")
    assert r.returncode == 0, r.stderr
    piped = run("compress", "-c", *model, stdin=TEXT)
    assert piped.returncode == 0 and piped.stdout.startswith(b"LMPZ")
    back = run("decompress", *model, "-", stdin=piped.stdout)
    assert back.returncode == 0 and back.stdout == TEXT
    assert run("test", *model, d / "out.lmp").returncode == 0
    listing = run("list", d / "out.lmp")
    assert listing.returncode == 0 and b"chunk 0" in listing.stdout and b"tiny" in listing.stdout
    piped_listing = run("list", "-", stdin=(d / "out.lmp").read_bytes())  # a pipe is read, not mapped
    assert piped_listing.returncode == 0 and piped_listing.stdout.split(b"\n")[1:] == listing.stdout.split(b"\n")[1:]


def test_bad_inputs_fail_cleanly(work):
    d, model = work
    (d / "junk.lmp").write_bytes(b"this is not an archive")
    blob = run("compress", "-c", *model, stdin=TEXT).stdout
    (d / "short.lmp").write_bytes(blob[: len(blob) // 2])
    cases = [
        (("decompress", *model, d / "junk.lmp"), b"not an lmpress archive"),
        (("decompress", *model, d / "short.lmp"), b"truncated"),
        (("compress", *model, d / "missing.txt"), b"No such file"),
        (("compress", *model, d), b"is a directory"),
        (("decompress", *model, d / "a.txt"), b"unknown suffix"),
        (("compress", "--model", d / "nowhere", d / "a.txt"), b"no such model"),
    ]
    for args, message in cases:
        r = run(*args)
        assert r.returncode == 1, args
        assert message in r.stderr and b"Traceback" not in r.stderr, r.stderr
    assert not (d / "junk").exists() and not (d / "short").exists()  # no partial outputs
    assert run("compress", "--window", "4", "--keep-tokens", "9", d / "a.txt").returncode == 1
    assert run("frobnicate").returncode == 2


def test_full_disk_is_reported(work):
    d, model = work
    with open("/dev/full", "wb") as full:
        r = subprocess.run(
            [sys.executable, "-m", "lmpress", "compress", "-c", "-f", *map(str, model), str(d / "a.txt")],
            stdout=full,
            capture_output=False,
            stderr=subprocess.PIPE,
            timeout=300,
        )
    assert r.returncode == 1 and b"No space left" in r.stderr


def test_file_size_limit_leaves_no_partial_output(work):
    """A write that fails halfway (here RLIMIT_FSIZE: "File too large") leaves the input and no temporary file."""
    d, model = work
    blob = run("compress", "-c", *model, d / "a.txt").stdout
    (d / "b.lmp").write_bytes(blob)

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))

    for args in (["compress", "--rm", d / "a.txt"], ["decompress", "--rm", d / "b.lmp"]):
        r = subprocess.run(
            [sys.executable, "-m", "lmpress", *map(str, [*args[:2], *model, *args[2:]])],
            capture_output=True,
            timeout=300,
            preexec_fn=limited,
        )
        assert r.returncode == 1 and r.stderr.count(b"\n") == 1 and b"File too large" in r.stderr, r.stderr
    assert sorted(p.name for p in d.iterdir()) == ["a.txt", "b.lmp"] and (d / "a.txt").read_bytes() == TEXT


def test_interrupt_leaves_no_partial_output(work):
    d, model = work
    (d / "big.txt").write_bytes(TRAINING_TEXT.encode() * 40)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmpress", "compress", "-v", "--chunk-size", "100000", *map(str, model), d / "big.txt"],
        stderr=subprocess.PIPE,
        # a test run in the background of a non-interactive shell inherits an ignored SIGINT: undo that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = b""
    while b"big.txt" not in seen:  # the progress bar names the file: coding is under way
        seen += proc.stderr.read(1) or b"big.txt"
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert b"interrupted" in err
    assert sorted(os.listdir(d)) == ["a.txt", "big.txt"]


def test_interrupt_while_torch_imports_is_one_line(tmp_path):
    """Ctrl-C in the seconds torch takes to import: a stand-in torch that is interrupted on import."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise KeyboardInterrupt\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    r = subprocess.run([sys.executable, "-m", "lmpress", "--help"], capture_output=True, env=env, timeout=60)
    assert (r.returncode, r.stderr) == (130, b"lmpress: interrupted\n")


def test_an_interrupt_swallowed_by_a_library_still_stops_the_commit(tmp_path, monkeypatch):
    """A KeyboardInterrupt lost in a finaliser is remembered: the output is not renamed into place."""
    from lmpress.cli import common

    monkeypatch.setattr(common.Interrupt, "seen", True)
    target = tmp_path / "out.lmp"
    with pytest.raises(KeyboardInterrupt), common.atomic_output(target, force=False) as (out, _):
        out.write(b"partial")
    assert os.listdir(tmp_path) == []
