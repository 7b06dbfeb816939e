"""The tuning-log folder as a shared `--log-dir`: planted symbolic links are refused and never written
through, a stale lock is reported and taken over, a rejected line says what is wrong with it, and the temp
folders a killed run leaves behind are removed by the next one."""

import json
import os
import shutil
import subprocess

import pytest

from tvmquant.database import (LOCK, RECORDS, TASKS, WORKLOADS, load_task_state, locked, open_database,
                               read_database, save_task_state)
from tvmquant.errors import UserError
from tvmquant.resources import shipped_tuning_dir

SHIPPED = shipped_tuning_dir("x86")


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "victim.txt"
    path.write_text("precious\n")
    return path


@pytest.fixture
def log_dir(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    for name in (WORKLOADS, RECORDS):
        shutil.copyfile(SHIPPED / name, folder / name)
    return folder


def test_symlinked_lock_is_refused_and_victim_untouched(log_dir, victim):
    (log_dir / LOCK).symlink_to(victim)
    with pytest.raises(UserError, match="symbolic link"):
        with locked(log_dir):
            pass
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("name", [TASKS, f".{TASKS}.tmp"])
def test_task_state_never_written_through_a_link(log_dir, victim, name):
    (log_dir / name).symlink_to(victim)
    try:
        save_task_state(log_dir, {"t:1": {"untuned_ms": 1.0}})
    except UserError as exc:
        assert "symbolic link" in str(exc)
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("name", [WORKLOADS, RECORDS, TASKS])
def test_symlinked_database_file_is_refused(log_dir, victim, name):
    target = log_dir / name
    target.unlink(missing_ok=True)
    target.symlink_to(victim)
    for action in (open_database, read_database, load_task_state):
        if action is load_task_state and name != TASKS:
            continue
        with pytest.raises(UserError, match="symbolic link"):
            action(log_dir)
    assert victim.read_text() == "precious\n"


def test_rejected_lines_never_appended_through_a_link(log_dir, victim):
    (log_dir / RECORDS).write_text((log_dir / RECORDS).read_text() + "\n{cut short\n")
    (log_dir / f"{RECORDS}.rejected").symlink_to(victim)
    with pytest.raises(UserError, match="symbolic link"):
        open_database(log_dir)
    assert victim.read_text() == "precious\n"


def test_stale_lock_of_a_dead_pid_is_named_and_taken_over(log_dir, capsys):
    dead = subprocess.Popen(["true"])
    dead.wait()
    (log_dir / LOCK).write_text(f"tvmquant tune (pid {dead.pid})\n")
    with locked(log_dir, timeout=5):
        assert (log_dir / LOCK).read_text() == f"tvmquant tune (pid {os.getpid()})\n"
    err = capsys.readouterr().err
    assert f"taking over the lock left by tvmquant tune (pid {dead.pid}, not running)" in err


def test_rejected_records_name_their_cause_in_words(log_dir):
    good = (log_dir / RECORDS).read_text().splitlines()
    index, record = json.loads(good[0])
    bad = {
        "{cut short": "not valid JSON",
        json.dumps([index, record[:3]]): "has 3 field(s); expected 4",
        json.dumps([99999, record]): "refers to workload 99999",
        json.dumps([index, [record[0], ["fast"], record[2], record[3]]]): "run times are not a list of numbers",
        json.dumps([index, [[[["NoSuchInstruction", [], [], []]], []], *record[1:]]]): "TVM cannot rebuild it",
        json.dumps({"index": index}): "expected [workload index, record]",
    }
    (log_dir / RECORDS).write_text("".join(f"{line}\n" for line in [*good, *bad]))
    with pytest.warns(UserWarning) as caught:
        database = open_database(log_dir)
    messages = [str(w.message) for w in caught]
    for number, reason in enumerate(bad.values(), start=len(good) + 1):
        assert any(f"{RECORDS}:{number}: unreadable tuning record dropped: " in m and reason in m for m in messages), reason
    assert not any("Check failed" in m for m in messages)
    assert len(database.get_all_tuning_records()) == len(good)


def test_stale_temp_folders_removed_live_and_linked_ones_kept(tmp_path):
    from tvmquant import tempdirs

    root = tmp_path / "tmp"
    root.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [root / f"tvmquant-tune-{dead.pid}-abc", root / f"tvmquant-ms-{dead.pid}-def", root / f"tvmquant-db-{dead.pid}-x"]
    for folder in stale:
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "candidate.so").write_bytes(b"x")
    live = root / f"tvmquant-tune-{os.getpid()}-ghi"
    live.mkdir()
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep").write_text("x")
    (root / f"tvmquant-ms-{dead.pid}-link").symlink_to(precious)
    other = root / "tvmquant-unrelated"
    other.mkdir()
    removed = tempdirs.clean_stale(root)
    assert sorted(removed) == sorted(stale)
    assert live.is_dir() and other.is_dir() and (precious / "keep").is_file()


def test_sigterm_removes_own_temp_folders_and_exits(tmp_path):
    """What a SIGTERMed `tune` does, without the tune: its folders go, an unrelated process's stay."""
    import signal
    import sys
    import time

    root = tmp_path / "tmp"
    root.mkdir()
    other = root / f"tvmquant-tune-{os.getpid()}-keep"
    other.mkdir()
    script = ("import time\nfrom tvmquant import tempdirs\n"
              "with tempdirs.exit_cleanly_on_termination(), tempdirs.private_dir('tune') as d:\n"
              "    (d / 'work').mkdir()\n    print(d, flush=True)\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "TMPDIR": str(root)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    folder = proc.stdout.readline().strip()
    assert os.path.isdir(folder)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "terminated by SIGTERM" in err and "Traceback" not in err
    assert not os.path.exists(folder) and other.is_dir()
