"""archgen.storage against hostile or mistaken input: passwords never shown (every URL form,
driver messages, config.yaml, the CLI), the journal file repaired after a torn write or refused
when damaged in the middle, stale journal locks, and one-line errors for bad --storage values."""

from __future__ import annotations

import json
import logging
import os
import string
import threading
import time
from pathlib import Path
from urllib.parse import quote, unquote

import optuna
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from optuna.trial import TrialState

from archgen.errors import SearchConfigError
from archgen.journal import STALE_LOCK_S, check_journal, scan_journal
from archgen.redact import redact, redact_text
from archgen.settings import SearchSettings
from archgen.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)

# -- redaction -----------------------------------------------------------------------------------

# (url, password, parts that must still be shown)
URL_FORMS = [
    ("postgresql://alice:Hunter2pw@db.example.com/prod", "Hunter2pw", ["alice", "db.example.com", "prod"]),
    ("postgresql://alice:Hunter2pw@db.example.com:5432/prod", "Hunter2pw", ["alice", "db.example.com:5432", "prod"]),
    ("postgresql://:Hunter2pw@db.example.com/prod", "Hunter2pw", ["db.example.com", "prod"]),
    ("postgresql://alice:p@ss:w/rd@db.example.com/prod", "p@ss:w/rd", ["alice", "db.example.com", "prod"]),
    ("postgresql://alice:p@ssw@rd@db.example.com/prod", "p@ssw@rd", ["alice", "db.example.com", "prod"]),
    ("postgresql://alice:pa?ss#wd@db.example.com/prod", "pa?ss#wd", ["alice", "db.example.com", "prod"]),
    ("postgresql://alice:p%40ss%3Aw%2Frd@db.example.com/prod", "p%40ss%3Aw%2Frd", ["alice", "db.example.com", "prod"]),
    ("postgresql://alice:%F0%9F%94%91key@db.example.com/prod", "%F0%9F%94%91key", ["alice", "db.example.com", "prod"]),
    ("postgresql+psycopg://alice:Hunter2pw@db.example.com/prod", "Hunter2pw",
     ["postgresql+psycopg://", "alice", "db.example.com", "prod"]),
    ("postgresql+psycopg2://alice:Hunter2pw@[::1]:5432/prod", "Hunter2pw", ["alice", "[::1]:5432", "prod"]),
    ("postgresql://alice:Hunter2pw@[2001:db8::7]/prod", "Hunter2pw", ["alice", "[2001:db8::7]", "prod"]),
    ("postgresql://alice@db.example.com/prod?password=Hunter2pw", "Hunter2pw", ["alice", "db.example.com", "prod"]),
    ("postgresql://alice@db.example.com/prod?sslmode=require&PASSWORD=Hunter2pw", "Hunter2pw",
     ["alice", "db.example.com", "prod", "sslmode=require"]),
    ("postgresql://alice@db.example.com/prod?passwd=Hunter2pw&sslmode=require", "Hunter2pw",
     ["alice", "db.example.com", "prod", "sslmode=require"]),
    ("postgresql://alice@db.example.com/prod?sslpassword=Hunter2pw", "Hunter2pw", ["alice", "db.example.com", "prod"]),
    ("postgresql://alice@db.example.com/prod?sslmode=require;password=Hunter2pw", "Hunter2pw",
     ["alice", "db.example.com", "prod"]),
    ("postgresql://alice@db.example.com/prod?pass%77ord=Hunter2pw", "Hunter2pw", ["alice", "db.example.com", "prod"]),
    ("postgresql://alice@db.example.com/prod?password=Hun%26ter2pw", "Hun%26ter2pw", ["alice", "db.example.com"]),
    ("postgresql://alice@db.example.com/prod?password=Hunter&2pw&sslmode=require", "Hunter&2pw",
     ["alice", "db.example.com", "prod", "sslmode=require"]),
    ("postgresql:///prod?host=db.example.com&user=alice&password=Hunter2pw", "Hunter2pw",
     ["alice", "db.example.com", "prod"]),
    ("postgresql://alice@db.example.com/prod?options=-c%20password%3DHunter2pw", "Hunter2pw",
     ["alice", "db.example.com", "prod"]),
    ("postgresql://alice@db.example.com/prod?dsn=host%3Dx%20password%3D%27Hunter2pw%27", "Hunter2pw",
     ["alice", "db.example.com", "prod"]),
    ("mysql+pymysql://alice:Hunter2pw@db.example.com:3306/prod?charset=utf8mb4", "Hunter2pw",
     ["alice", "db.example.com:3306", "prod", "charset=utf8mb4"]),
    # not URLs: conservative
    ("alice:Hunter2pw@db.example.com/prod", "Hunter2pw", ["alice", "db.example.com"]),
    ("postgresql:/alice:Hunter2pw@db.example.com/prod", "Hunter2pw", ["db.example.com"]),
    ("host=db.example.com user=alice password=Hunter2pw dbname=prod", "Hunter2pw",
     ["alice", "db.example.com", "prod"]),
    ("host=db.example.com password='Hunter 2pw' dbname=prod", "Hunter 2pw", ["db.example.com", "prod"]),
]


@pytest.mark.parametrize(("url", "password", "shown"), URL_FORMS, ids=[u[:60] for u, _, _ in URL_FORMS])
def test_redact_hides_every_password_form(url, password, shown):
    out = redact(url)
    for secret in {password, unquote(password), unquote(password).replace("&", "")}:
        assert secret not in out, out
    for part in shown:
        assert part in out, out
    assert "***" in out
    assert redact(out) == out  # idempotent: config.yaml is compared redacted on resume


def test_redact_keeps_urls_without_password():
    for url in ("postgresql://alice@db.example.com:5432/prod", "postgresql://db/prod?sslmode=require",
                "sqlite:///runs/study.db", "postgresql://[::1]:5432/test"):
        assert redact(url) == url


def test_redact_is_conservative_when_an_at_sign_is_in_the_query():
    out = redact("postgresql://alice:pw1234@db/prod?application_name=me@laptop")
    assert "pw1234" not in out and out.startswith("postgresql://alice:***@")


def test_redact_accepts_any_value():
    assert redact(5) == "5"
    assert "Hunter2pw" not in redact({"password": "Hunter2pw"})


_PRINTABLE = st.text(alphabet=string.printable, min_size=4, max_size=40)
_UNICODE = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=4, max_size=20)


@settings(max_examples=500, deadline=None)
@given(password=st.one_of(_PRINTABLE, _UNICODE), user=st.sampled_from(["alice", "", "bob_2"]))
def test_redact_hides_random_passwords(password, user):
    encoded = quote(password, safe="")
    as_userinfo = redact(f"postgresql://{user}:{encoded}@dbhost:5432/mydb?sslmode=require")
    assert as_userinfo == f"postgresql://{user}:***@dbhost:5432/mydb?sslmode=require"
    as_query = redact(f"postgresql+psycopg://{user}@dbhost/mydb?sslmode=require&password={encoded}")
    assert as_query == f"postgresql+psycopg://{user}@dbhost/mydb?sslmode=require&password=***"
    in_text = redact_text(f"cannot connect to postgresql://{user}:{encoded}@dbhost/mydb: refused")
    assert in_text == f"cannot connect to postgresql://{user}:***@dbhost/mydb: refused"
    scaffold = as_userinfo + as_query + in_text
    assume(password not in scaffold and encoded not in scaffold)
    for out in (as_userinfo, as_query, in_text):
        assert password not in out and encoded not in out


def test_redact_text_hides_dsns_and_literal_secrets():
    msg = ('connection to server at "127.0.0.1", port 1 failed: host=127.0.0.1 port=1 password=xyz123 '
           "user=postgres; engine postgresql://postgres:S3cretPW@127.0.0.1/test {'password': 'abc987'} "
           "echo Hunter2pw")
    out = redact_text(msg, secrets=["Hunter2pw", "ab"])
    for secret in ("xyz123", "S3cretPW", "abc987", "Hunter2pw"):
        assert secret not in out
    assert "127.0.0.1" in out and "postgres" in out and "port 1 failed" in out


# -- bad --storage values --------------------------------------------------------------------------

SECRET = "S3cretPW"


def _one_line_error(exc_info, *absent):
    msg = str(exc_info.value)
    assert "\n" not in msg and len(msg) < 400, msg
    for s in absent:
        assert s not in msg, msg
    return msg


def test_unreachable_postgres_is_one_redacted_line(tmp_path):
    with pytest.raises(SearchConfigError) as e:
        open_storage(f"postgresql://postgres:{SECRET}@127.0.0.1:1/test", tmp_path)
    msg = _one_line_error(e, SECRET)
    assert "postgres:***@127.0.0.1:1/test" in msg and "refused" in msg.lower()


def test_unreachable_postgres_with_query_password(tmp_path):
    with pytest.raises(SearchConfigError) as e:
        open_storage(f"postgresql://postgres@127.0.0.1:1/test?password={SECRET}", tmp_path)
    _one_line_error(e, SECRET)


def test_cli_search_with_unreachable_storage_exits_2_without_the_password(tmp_path, run_cli):
    out_dir = tmp_path / "run"
    code, out, err = run_cli("search", "--workers", "1", "--storage", f"postgresql://postgres:{SECRET}@127.0.0.1:1/test",
                             "--out", str(out_dir), "--trials", "1", "--no-calibrate", "-q")
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("archgen search: error:"), err
    assert SECRET not in err + out
    assert not (out_dir / "config.yaml").exists()


def test_settings_yaml_never_holds_the_password():
    for url in (f"postgresql://postgres:{SECRET}@127.0.0.1:1/test",
                f"postgresql://:{SECRET}@127.0.0.1/test",
                f"postgresql://postgres@127.0.0.1/test?password={SECRET}"):
        d = SearchSettings(workers=1, storage=url).to_yaml_dict()
        assert SECRET not in json.dumps(d)
        assert "127.0.0.1" in d["storage"]


@pytest.mark.parametrize("value", [5, 3.5, True, ["postgresql://u:S3cretPW@h/db"], {"url": "x"}])
def test_storage_that_is_not_a_string(tmp_path, value):
    with pytest.raises(SearchConfigError) as e:
        open_storage(value, tmp_path)
    msg = _one_line_error(e, SECRET)
    assert "must be a database URL string" in msg and type(value).__name__ in msg


@pytest.mark.parametrize(
    ("url", "expect"),
    [
        ("not a url :S3cretPW@x", "is not a database URL"),
        ("foo://u:S3cretPW@host/db", "unknown database dialect 'foo'"),
        ("postgresql+nodriver://u:S3cretPW@host/db", "unknown database dialect"),
        ("postgresql://u:S3cretPW@host:notaport/db", "cannot be parsed"),
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
    ],
)
def test_bad_urls_are_one_line(tmp_path, url, expect):
    with pytest.raises(SearchConfigError) as e:
        open_storage(url, tmp_path)
    msg = _one_line_error(e, SECRET)
    assert expect in msg


def test_missing_driver_names_it(tmp_path):
    pytest.importorskip("sqlalchemy")
    try:
        import MySQLdb  # noqa: F401
        pytest.skip("mysqlclient is installed here")
    except ImportError:
        pass
    with pytest.raises(SearchConfigError) as e:
        open_storage(f"mysql://u:{SECRET}@127.0.0.1:1/db", tmp_path)
    msg = _one_line_error(e, SECRET)
    assert "driver" in msg and "not installed" in msg


def test_sqlite_into_a_missing_directory(tmp_path):
    url = f"sqlite:///{tmp_path}/no/such/dir/study.db"
    with pytest.raises(SearchConfigError) as e:
        open_storage(url, tmp_path / "run")
    msg = _one_line_error(e)
    assert "does not exist" in msg and "no/such/dir" in msg
    assert not (tmp_path / "no").exists()
    with pytest.raises(SearchConfigError, match="is a directory"):
        open_storage(f"sqlite:///{tmp_path}", tmp_path / "run")


def test_sqlite_file_works(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/study.db", tmp_path / "run")
    study = optuna.create_study(storage=storage, study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert len(study.trials) == 2
    storage.engine.dispose()


def test_very_long_url_is_quoted_as_an_excerpt(tmp_path):
    url = f"postgresql://postgres:{SECRET}@127.0.0.1:1/" + "d" * 6000 + f"?password={SECRET}&x=" + "y" * 3000
    for bad in (url, "foo" + url[len("postgresql"):]):
        with pytest.raises(SearchConfigError) as e:
            open_storage(bad, tmp_path)
        msg = _one_line_error(e, SECRET)
        assert "characters)" in msg


def test_control_characters_stay_on_one_line(tmp_path):
    with pytest.raises(SearchConfigError) as e:
        open_storage("foo://u:S3cretPW@h/db\nsecond line\rthird", tmp_path)
    _one_line_error(e, SECRET)


# -- the journal file ------------------------------------------------------------------------------


def _make_study(run_dir: Path, n_trials: int) -> optuna.Study:
    storage = open_storage(None, run_dir)
    study = optuna.create_study(storage=storage, study_name="archgen", load_if_exists=True)
    study.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=n_trials)
    return study


def _complete(study: optuna.Study) -> dict[int, tuple[float, dict]]:
    return {t.number: (t.value, t.params) for t in study.get_trials(states=(TrialState.COMPLETE,))}


def _side_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("study.journal.damaged-*"))


def test_resume_after_a_torn_last_line(tmp_path, caplog):
    run = tmp_path / "run"
    _make_study(run, 5)
    journal = run / "study.journal"
    data = journal.read_bytes()
    lines = data.splitlines(keepends=True)
    cut = len(data) - len(lines[-1]) // 2  # the last record, torn in the middle
    journal.write_bytes(data[:cut])
    # what the journal holds without its torn record
    reference = tmp_path / "ref"
    reference.mkdir()
    (reference / "study.journal").write_bytes(b"".join(lines[:-1]))
    before = _complete(optuna.load_study(study_name="archgen", storage=open_storage(None, reference)))
    assert len(before) >= 4

    with caplog.at_level(logging.WARNING, logger="archgen.journal"):
        study = _make_study(run, 3)
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert str(journal) in warning and "torn tail" in warning
    assert f"dropped {cut - len(b''.join(lines[:-1]))} byte(s) in 1 line(s)" in warning
    (side,) = _side_files(run)
    assert side.read_bytes() == data[len(b"".join(lines[:-1])):cut]
    assert str(side) in warning
    after = _complete(study)
    assert all(after[n] == v for n, v in before.items())
    assert len(after) == len(before) + 3
    # the repaired journal reads cleanly in a fresh process view, and with Optuna's own backend
    assert scan_journal(journal).ok
    plain = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    assert _complete(optuna.load_study(study_name="archgen", storage=plain)) == after


def test_without_repair_optuna_breaks_on_a_torn_journal(tmp_path):
    """The failure this module prevents: Optuna appends after the torn line and then cannot read."""
    run = tmp_path / "run"
    _make_study(run, 2)
    journal = run / "study.journal"
    journal.write_bytes(journal.read_bytes()[:-7])
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name="archgen", storage=storage)
    with pytest.raises((ValueError, AttributeError)):  # JSONDecodeError, or Optuna's replay lost
        study.optimize(lambda t: t.suggest_float("x", -1, 1), n_trials=2)
        optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))


def test_nul_bytes_after_valid_records(tmp_path, caplog):
    run = tmp_path / "run"
    _make_study(run, 3)
    journal = run / "study.journal"
    good = journal.read_bytes()
    journal.write_bytes(good + b"\0" * 4096)
    with caplog.at_level(logging.WARNING, logger="archgen.journal"):
        study = _make_study(run, 1)
    assert "dropped 4096 byte(s)" in caplog.text
    assert _side_files(run)[0].read_bytes() == b"\0" * 4096
    assert len(_complete(study)) == 4
    assert journal.read_bytes().startswith(good)


def test_several_garbage_lines_at_the_end(tmp_path):
    run = tmp_path / "run"
    _make_study(run, 2)
    journal = run / "study.journal"
    good = journal.read_bytes()
    tail = b'{"op_code": 5, "worker_\n\n\x00\x00garbage\n[1, 2]\n{"no_op_code": 1}\n{"op_co'
    journal.write_bytes(good + tail)
    found = check_journal(journal)
    assert found.bad_lines == 6 and not found.middle
    assert journal.read_bytes() == good
    assert _side_files(run)[0].read_bytes() == tail


def test_garbage_in_the_middle_is_refused_with_the_line(tmp_path):
    run = tmp_path / "run"
    _make_study(run, 2)
    journal = run / "study.journal"
    lines = journal.read_bytes().splitlines(keepends=True)
    damaged = b"".join(lines[:3]) + b"\x00\x00 not json\n" + b"".join(lines[3:])
    journal.write_bytes(damaged)
    with pytest.raises(SearchConfigError) as e:
        open_storage(None, run)
    msg = _one_line_error(e)
    assert str(journal) in msg and "line 4" in msg and "move the file away" in msg
    assert journal.read_bytes() == damaged  # nothing changed
    assert not _side_files(run)


def test_torn_line_followed_by_later_appends_is_damage_in_the_middle(tmp_path):
    """What an unrepaired resume leaves behind: the torn record glued to the next one."""
    run = tmp_path / "run"
    _make_study(run, 2)
    journal = run / "study.journal"
    data = journal.read_bytes()
    lines = data.splitlines(keepends=True)
    journal.write_bytes(data[:-5] + lines[-1] + lines[-1])
    with pytest.raises(SearchConfigError, match=f"line {len(lines)} is damaged"):
        open_storage(None, run)


def test_empty_journal(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "study.journal").write_bytes(b"")
    study = _make_study(run, 1)
    assert len(_complete(study)) == 1
    assert not _side_files(run)


def test_journal_of_only_nul_bytes(tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    (run / "study.journal").write_bytes(b"\0" * 10000)
    with caplog.at_level(logging.WARNING, logger="archgen.journal"):
        study = _make_study(run, 1)
    assert "dropped 10000 byte(s) in 1 line(s) after record 0" in caplog.text
    assert _side_files(run)[0].read_bytes() == b"\0" * 10000
    assert len(_complete(study)) == 1


def test_valid_journal_is_left_byte_identical(tmp_path):
    run = tmp_path / "run"
    _make_study(run, 3)
    journal = run / "study.journal"
    before, st = journal.read_bytes(), journal.stat()
    time.sleep(0.01)
    storage = open_storage(None, run)
    assert len(optuna.load_study(study_name="archgen", storage=storage).trials) == 3
    assert journal.read_bytes() == before
    assert journal.stat().st_mtime_ns == st.st_mtime_ns and journal.stat().st_ino == st.st_ino
    assert sorted(p.name for p in run.iterdir()) == ["study.journal"]


def test_complete_last_record_without_newline_is_kept(tmp_path, caplog):
    run = tmp_path / "run"
    _make_study(run, 2)
    journal = run / "study.journal"
    data = journal.read_bytes()
    journal.write_bytes(data[:-1])
    with caplog.at_level(logging.WARNING, logger="archgen.journal"):
        check_journal(journal)
    assert journal.read_bytes() == data
    assert "no line end" in caplog.text and not _side_files(run)


def test_repair_keeps_the_file_mode(tmp_path):
    run = tmp_path / "run"
    _make_study(run, 1)
    journal = run / "study.journal"
    journal.chmod(0o600)
    journal.write_bytes(journal.read_bytes() + b'{"op_')
    check_journal(journal)
    assert journal.stat().st_mode & 0o777 == 0o600


def test_stale_journal_lock_with_a_relative_run_dir(tmp_path, monkeypatch, caplog):
    """A killed append leaves ``study.journal.lock`` (a symlink to the journal's path as given:
    relative, so it dangles); Optuna's lock then spins forever. open_storage removes it."""
    monkeypatch.chdir(tmp_path)
    run = Path("runs/x")
    _make_study(run, 1)
    lock = run / "study.journal.lock"
    os.symlink(str(run / "study.journal"), lock)  # as Optuna 4/5 leaves it
    old = time.time() - STALE_LOCK_S - 60
    os.utime(lock, (old, old), follow_symlinks=False)
    done: list[optuna.Study] = []
    with caplog.at_level(logging.WARNING, logger="archgen.journal"):
        t = threading.Thread(target=lambda: done.append(_make_study(run, 1)), daemon=True)
        t.start()
        t.join(20)
    assert done, "a stale journal lock blocked the study"
    assert len(_complete(done[0])) == 2
    assert not os.path.lexists(lock)
    assert "removed a journal lock" in caplog.text


def test_fresh_journal_lock_is_not_taken_away(tmp_path):
    run = tmp_path / "run"
    _make_study(run, 1)
    lock = run / "study.journal.lock"
    os.symlink(str((run / "study.journal").absolute()), lock)  # held by a live writer
    check_journal(run / "study.journal")
    assert os.path.lexists(lock)


def test_repair_waits_for_a_live_writer_and_then_sees_its_line_complete(tmp_path):
    """A reader may see a half-written last line while a worker appends: the repair takes the
    journal lock first, and once the writer has finished the journal is valid and untouched."""
    run = tmp_path / "run"
    _make_study(run, 1)
    journal = run / "study.journal"
    good = journal.read_bytes()
    record = good.splitlines(keepends=True)[-1]
    lock = run / "study.journal.lock"
    os.symlink(str(journal.absolute()), lock)
    journal.write_bytes(good + record[:10])  # the writer is mid-append

    def finish():
        time.sleep(0.5)
        with open(journal, "ab") as fh:
            fh.write(record[10:])
        os.unlink(lock)

    writer = threading.Thread(target=finish)
    writer.start()
    check_journal(journal)
    writer.join()
    assert journal.read_bytes() == good + record
    assert not _side_files(run)


def test_journal_path_that_is_a_directory(tmp_path):
    run = tmp_path / "run"
    (run / "study.journal").mkdir(parents=True)
    with pytest.raises(SearchConfigError, match="not a file"):
        open_storage(None, run)


def test_run_dir_that_is_a_file(tmp_path):
    (tmp_path / "run").write_text("x")
    with pytest.raises(SearchConfigError, match="cannot create the run directory"):
        open_storage(None, tmp_path / "run")
