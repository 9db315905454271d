"""Scale-out: segments coded by worker processes or Ray actors give exactly the archive one process gives, any
archive decodes on workers, analyses agree to the bit, and a killed run resumes to the same archive."""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TRAINING_TEXT, run

import lmpress
from lmpress import parallel
from lmpress.api import scoring_setup
from lmpress.codec import format as fmt
from lmpress.codec.settings import Settings
from lmpress.lens.analysis import local_settings, score_document

SMALL = {"chunk_size": 60, "batch": 4}  # 64 chunks of ~60 bytes a segment: 3.8 KB segments
TEXT = TRAINING_TEXT.encode()
NOISE = random.Random(5).randbytes(2000)
MIXED = TEXT * 2 + NOISE + TEXT[:5000]  # 16 KB: three segments, one with a classical chunk


@pytest.fixture(scope="module")
def pool(tiny_model_dir):
    job = parallel.Job((str(tiny_model_dir),), None, SMALL, threads=1)
    with parallel.make_pool(job, workers=2) as workers:
        yield workers


def test_workers_write_the_archive_one_process_writes(pool, tiny):
    for data in (b"", b"x", TEXT[:500], MIXED):
        alone = lmpress.compress(data, model=tiny, **SMALL)
        blocks = (data[i : i + 3000] for i in range(0, len(data), 3000))  # segments cut across reads
        assert b"".join(parallel.compress(pool, blocks, Settings(**SMALL))) == alone


def test_workers_decode_any_archive_and_every_member(pool, tiny):
    one = lmpress.compress(MIXED, model=tiny, **SMALL)
    two = lmpress.compress(TEXT[:700], model=tiny)
    assert len(list(fmt.members(one))[0].segments) >= 3
    assert b"".join(parallel.decompress(pool, one)) == MIXED
    assert b"".join(parallel.decompress(pool, one + two + one)) == MIXED + TEXT[:700] + MIXED
    assert parallel.original_size(one + two, list(fmt.members(one + two))) == len(MIXED) + 700


def test_workers_report_damage_as_a_plain_decoder_does(pool, tiny):
    blob = bytearray(lmpress.compress(MIXED, model=tiny, **SMALL))
    segments = list(fmt.members(blob))[0].segments
    blob[segments[-1][1] - 10] ^= 0x55
    with pytest.raises(lmpress.FormatError, match=rf"frame checksum mismatch\) in segment {len(segments) - 1}$"):
        b"".join(parallel.decompress(pool, bytes(blob)))
    with pytest.raises(lmpress.FormatError, match="truncated archive"):
        b"".join(parallel.decompress(pool, bytes(blob[:-3])))


def test_a_model_that_cannot_load_is_one_error(tmp_path):
    job = parallel.Job((str(tmp_path / "missing"),), None, SMALL, threads=1)
    with parallel.make_pool(job, workers=1) as workers, pytest.raises(lmpress.ModelUnavailableError, match="missing"):
        b"".join(parallel.compress(workers, [TEXT[:100]], Settings(**SMALL)))


def test_scores_on_workers_are_those_of_one_process(pool, tiny):
    docs = [(f"doc{i}", TEXT[i * 700 : i * 700 + 900]) for i in range(4)]
    model, settings = scoring_setup(tiny, **SMALL)
    for (name, data, model_name, scores, short), (expected_name, expected_data) in zip(
        parallel.score(pool, docs, local=16), docs
    ):
        assert (name, data, model_name) == (expected_name, expected_data, tiny.name)
        assert scores.bits == score_document(model, data, settings).bits
        assert short.bits == score_document(model, data, local_settings(settings, 16)).bits


class Refusing(parallel.Pool):
    """A pool that codes nothing but the header: what a resumed run must not need."""

    workers = 2

    def __init__(self, real: parallel.Pool):
        self.real = real

    def submit(self, method, *args):
        assert method == "header", "a unit in the journal was computed again"
        return self.real.submit(method, *args)

    def close(self) -> None:
        pass


def test_a_journal_keeps_every_unit_and_is_never_computed_twice(pool, tiny, tmp_path):
    identity = {"input": "MIXED"}
    journal = parallel.Journal(tmp_path / "parts", identity)
    expected = b"".join(parallel.compress(pool, [MIXED], Settings(**SMALL), journal))
    assert expected == lmpress.compress(MIXED, model=tiny, **SMALL)
    units = sorted(p for p in (tmp_path / "parts").iterdir() if p.name != "run.json")
    assert len(units) == len(list(fmt.members(expected))[0].segments)
    again = parallel.Journal(tmp_path / "parts", identity)
    assert b"".join(parallel.compress(Refusing(pool), [MIXED], Settings(**SMALL), again)) == expected
    # A damaged unit is computed again; another run's journal is discarded.
    units[1].write_bytes(b"damaged" + units[1].read_bytes()[7:])
    assert 1 not in parallel.Journal(tmp_path / "parts", identity).kept
    assert not parallel.Journal(tmp_path / "parts", {"input": "other"}).kept


def _parts(target: Path) -> int:
    folder = target.with_name(f".{target.name}.parts")
    return len([p for p in folder.iterdir() if "-" in p.name]) if folder.exists() else 0


def _killed_then_resumed(tmp_path: Path, model_dir: Path, scale: list[str], direction: str = "compress") -> None:
    """A run SIGKILLed once a few units are done, then the same command again: the output is the one an
    uninterrupted run writes, and the second run took the first one's units."""
    src = tmp_path / ("in.txt" if direction == "compress" else "in.txt.lmp")
    target = tmp_path / ("in.txt.lmp" if direction == "compress" else "in.txt")
    settings = ["--chunk-size", "30", "--batch", "4"] if direction == "compress" else []
    command = [direction, "-q", "-k", "--model", model_dir, *settings, *scale, src]
    driver = subprocess.Popen([sys.executable, "-m", "lmpress", *map(str, command)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while _parts(target) < 3 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    driver.kill()
    driver.wait()
    assert _parts(target) >= 3 and not target.exists(), driver.stderr.read()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # nothing beside the output
    r = run(*command[:1], "-v", *command[2:])
    assert r.returncode == 0, r.stderr
    assert b"resuming:" in r.stderr and not target.with_name(f".{target.name}.parts").exists()


def test_a_killed_compression_resumes_to_the_same_archive(tmp_path, tiny_model_dir):
    (tmp_path / "in.txt").write_bytes(MIXED * 2)
    reference = tmp_path / "reference.lmp"
    r = run("compress", "-q", "--model", tiny_model_dir, "--chunk-size", "30", "--batch", "4", "-o", reference,
            tmp_path / "in.txt")  # fmt: skip
    assert r.returncode == 0, r.stderr
    _killed_then_resumed(tmp_path, tiny_model_dir, ["-j", "2"])
    assert (tmp_path / "in.txt.lmp").read_bytes() == reference.read_bytes()
    # and a killed decompression resumes too
    os.replace(tmp_path / "in.txt", tmp_path / "original.txt")
    _killed_then_resumed(tmp_path, tiny_model_dir, ["-j", "2"], "decompress")
    assert (tmp_path / "in.txt").read_bytes() == (tmp_path / "original.txt").read_bytes()


def test_parquet_and_jsonl_documents_measured_on_workers(tmp_path, tiny_model_dir):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    texts = [TEXT[i : i + 400].decode() for i in range(0, 2000, 400)]
    pq.write_table(pa.table({"text": texts}), tmp_path / "docs.parquet")
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    common = ["measure", "--json", "-q", "--model", tiny_model_dir]
    local = run(*common, tmp_path / "docs.jsonl")
    on_workers = run(*common, "-j", "2", tmp_path / "docs.parquet")
    assert local.returncode == 0 and on_workers.returncode == 0, on_workers.stderr
    rows, parquet_rows = json.loads(local.stdout), json.loads(on_workers.stdout)
    assert [r["bits"] for r in rows] == [r["bits"] for r in parquet_rows]  # to the bit
    assert parquet_rows[0]["document"].endswith("docs.parquet:1")
    r = run(*common, "--field", "body", tmp_path / "docs.parquet")
    assert r.returncode == 1 and b"no column 'body'" in r.stderr and b"Traceback" not in r.stderr


def test_test_on_workers_and_bad_worker_options(tmp_path, tiny_model_dir):
    (tmp_path / "a.txt").write_bytes(TEXT[:300])
    r = run("compress", "-j", "0", "--model", tiny_model_dir, tmp_path / "a.txt")
    assert r.returncode == 1 and b"--workers must be at least 1" in r.stderr
    (tmp_path / "a.txt.lmp").write_bytes(lmpress.compress(MIXED, model=str(tiny_model_dir), **SMALL))
    assert run("test", "-j", "2", "--model", tiny_model_dir, tmp_path / "a.txt.lmp").returncode == 0
    damaged = bytearray((tmp_path / "a.txt.lmp").read_bytes())
    damaged[-20] ^= 1
    (tmp_path / "a.txt.lmp").write_bytes(damaged)
    r = run("test", "-j", "2", "--model", tiny_model_dir, tmp_path / "a.txt.lmp")
    assert r.returncode == 1 and r.stderr.count(b"\n") == 1 and b"checksum mismatch" in r.stderr


# --- On a local Ray cluster started here ----------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A Ray head node of 2 CPUs on this machine, started by the test and stopped after it (that node alone,
    not other Ray processes); its address. Ray's token authentication stays on, with a token of the test's own
    (``RAY_AUTH_TOKEN``: ``ray start`` makes none, and the machine may have no ~/.ray/auth_token)."""
    pytest.importorskip("ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # For the head node and every command the tests run: token authentication, and every Ray process on the
    # loopback address (Ray's switch for one-machine clusters; else it takes the address of the routed interface).
    environment = {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    before = {k: os.environ.get(k) for k in environment}
    os.environ.update(environment)
    head = subprocess.Popen(
        [shutil.which("ray", path=os.path.dirname(sys.executable)), "start", "--head", "--block", "--num-cpus=2",
         "--num-gpus=0", f"--port={port}", "--node-ip-address=127.0.0.1", "--include-dashboard=false",
         "--disable-usage-stats", f"--temp-dir={tmp_path_factory.mktemp('ray')}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while head.poll() is None and time.monotonic() < deadline:
            with socket.socket() as s:
                if not s.connect_ex(("127.0.0.1", port)):
                    break
            time.sleep(0.5)
        assert head.poll() is None, "the Ray head node did not start"
        yield f"127.0.0.1:{port}"
    finally:
        head.terminate()
        head.wait(timeout=120)
        for k, v in before.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v


def test_ray_archives_are_plain_archives_and_back(ray_cluster, tmp_path, tiny_model_dir, tiny):
    (tmp_path / "in.txt").write_bytes(MIXED)
    model = ["--model", tiny_model_dir]
    r = run("compress", "-q", *model, "--chunk-size", "60", "--batch", "4", "--address", ray_cluster, "-j", "2",
            tmp_path / "in.txt")  # fmt: skip
    assert r.returncode == 0, r.stderr
    blob = (tmp_path / "in.txt.lmp").read_bytes()
    assert blob == lmpress.compress(MIXED, model=tiny, **SMALL)  # what one process writes, so plain lmpress reads it
    plain = lmpress.compress(MIXED, model=tiny, chunk_size=200)
    (tmp_path / "plain.lmp").write_bytes(plain + blob)  # two members
    r = run("decompress", "-c", *model, "--address", ray_cluster, tmp_path / "plain.lmp")
    assert r.returncode == 0 and r.stdout == MIXED + MIXED, r.stderr
    # measure on Ray equals measure here, to the bit
    (tmp_path / "docs").mkdir()
    for i in range(3):
        (tmp_path / "docs" / f"{i}.txt").write_bytes(TEXT[i * 500 : i * 500 + 800])
    here = run("measure", "--json", "-q", *model, tmp_path / "docs")
    there = run("measure", "--json", "-q", *model, "--address", ray_cluster, tmp_path / "docs")
    assert here.returncode == there.returncode == 0, there.stderr
    assert json.loads(here.stdout) == json.loads(there.stdout)
    # more workers than the cluster can place is an error, not a wait for ever
    r = run("test", *model, "--address", ray_cluster, "-j", "3", tmp_path / "plain.lmp")
    assert r.returncode == 1 and b"room for 2 workers" in r.stderr and b"Traceback" not in r.stderr


def test_a_killed_ray_run_resumes_to_the_same_archive(ray_cluster, tmp_path, tiny_model_dir, tiny):
    (tmp_path / "in.txt").write_bytes(MIXED * 2)
    _killed_then_resumed(tmp_path, tiny_model_dir, ["--address", ray_cluster, "-j", "2"])
    settings = {"chunk_size": 30, "batch": 4}
    assert (tmp_path / "in.txt.lmp").read_bytes() == lmpress.compress(MIXED * 2, model=tiny, **settings)


def test_interrupting_a_run_on_workers_keeps_its_journal(tmp_path, tiny_model_dir):
    (tmp_path / "in.txt").write_bytes(MIXED * 16)  # ~140 segments: still running when the interrupt comes
    command = ["compress", "-q", "--model", tiny_model_dir, "--chunk-size", "30", "--batch", "4", "-j", "2"]
    # SIGINT as a terminal's Ctrl-C gives it, even where this suite runs in the background (which ignores it)
    default = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    driver = subprocess.Popen([sys.executable, "-m", "lmpress", *map(str, command), tmp_path / "in.txt"],
                              stderr=subprocess.PIPE, preexec_fn=default)  # fmt: skip
    target = tmp_path / "in.txt.lmp"
    deadline = time.monotonic() + 240
    while _parts(target) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    driver.send_signal(signal.SIGINT)
    assert driver.wait(timeout=60) == 130
    assert driver.stderr.read().strip() == b"lmpress: interrupted"  # one line: the workers' end is quiet too
    assert not target.exists() and _parts(target) >= 2


def test_measure_and_audit_resume_from_their_journal(tmp_path, tiny_model_dir):
    (tmp_path / "docs").mkdir()
    for i in range(4):
        (tmp_path / "docs" / f"{i}.txt").write_bytes(TEXT[i * 600 : i * 600 + 700])
    for command in ("measure", "audit"):
        journal = tmp_path / f"{command}.journal"
        common = [command, "--json", "--model", tiny_model_dir, "--journal", journal, tmp_path / "docs"]
        first = run(*common)
        assert first.returncode == 0, first.stderr
        units = sorted(p for p in journal.iterdir() if p.name != "run.json")
        assert len(units) == 4
        units[2].unlink()  # as if the run had been killed before it finished that document
        again = run(*common)
        assert again.returncode == 0 and b"resuming: 3 documents" in again.stderr, again.stderr
        assert json.loads(again.stdout) == json.loads(first.stdout)
        (tmp_path / "docs" / "0.txt").write_bytes(b"changed")  # other documents: the journal starts afresh
        changed = run(*common)
        assert b"resuming" not in changed.stderr and json.loads(changed.stdout) != json.loads(first.stdout)
        (tmp_path / "docs" / "0.txt").write_bytes(TEXT[:700])


def _worker_processes(driver: int) -> list[int]:
    """The pids of a driver's worker processes (spawned interpreters), from /proc."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == driver and b"spawn_main" in (stat.parent / "cmdline").read_bytes():
                pids.append(int(stat.parent.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds worker processes in /proc")
def test_a_worker_that_dies_fails_the_run_in_one_line(tmp_path, tiny_model_dir):
    """A worker killed halfway (out of memory, say) ends the run with an error, never a wait for ever; the
    journal keeps what was done."""
    (tmp_path / "in.txt").write_bytes(MIXED * 2)
    command = ["compress", "-q", "--model", tiny_model_dir, "--chunk-size", "30", "--batch", "4", "-j", "2"]
    driver = subprocess.Popen([sys.executable, "-m", "lmpress", *map(str, command), tmp_path / "in.txt"],
                              stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 240
    while _parts(tmp_path / "in.txt.lmp") < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    os.kill(_worker_processes(driver.pid)[0], signal.SIGKILL)
    assert driver.wait(timeout=120) == 1
    stderr = driver.stderr.read().strip()
    assert b"a worker process died" in stderr and b"\n" not in stderr, stderr
    assert _parts(tmp_path / "in.txt.lmp") >= 1 and not (tmp_path / "in.txt.lmp").exists()


def test_workers_code_with_a_dictionary(tmp_path, tiny_model_dir, tiny):
    """Each worker loads the dictionary: the archive is the one a single process makes with it, and decodes."""
    dictionary = lmpress.train(tiny, [TEXT[i : i + 120] for i in range(0, 2400, 60)], size=32)
    (tmp_path / "d.lmpd").write_bytes(dictionary.to_bytes())
    (tmp_path / "in.txt").write_bytes(MIXED)
    model = ["--model", tiny_model_dir, "-D", tmp_path / "d.lmpd"]
    r = run("compress", "-q", *model, "--chunk-size", "60", "--batch", "4", "-j", "2", tmp_path / "in.txt")
    assert r.returncode == 0, r.stderr
    blob = (tmp_path / "in.txt.lmp").read_bytes()
    assert blob == lmpress.compress(MIXED, model=tiny, dictionary=dictionary, **SMALL)
    r = run("decompress", "-c", *model, "-j", "2", tmp_path / "in.txt.lmp")
    assert r.returncode == 0 and r.stdout == MIXED, r.stderr
