"""Per-mailbox Sieve script storage (`cloudmail.sieve.scripts`): Dovecot's layout, names that
cannot leave the folder, atomic writes, the active link, quotas."""

from __future__ import annotations

import os

import pytest

from cloudmail.sieve.scripts import (
    MAX_NAME_LENGTH,
    BadScriptName,
    NoSuchScript,
    QuotaExceeded,
    ScriptActive,
    ScriptError,
    ScriptExists,
    ScriptStore,
    active_script_text,
    check_name,
)


@pytest.fixture
def store(tmp_path):
    return ScriptStore(tmp_path / "example.com" / "alice", max_scripts=3, max_size=50)


@pytest.mark.parametrize("name", ["", "a/b", "../x", "..", "a..b", ".hidden", "nul\0x",
                                  "tab\tx", "del\x7f", "c1\x85", "line\u2028sep",
                                  "x" * (MAX_NAME_LENGTH + 1), "\U0001f600" * 63])
def test_refused_names(name):
    with pytest.raises(BadScriptName):
        check_name(name)


def test_accepted_names_are_nfc():
    assert check_name("cafe\u0301 rules") == "caf\u00e9 rules"
    assert check_name("x" * MAX_NAME_LENGTH) == "x" * MAX_NAME_LENGTH
    assert check_name("a.b-c_d (1)") == "a.b-c_d (1)"


def test_put_get_list_and_layout(store):
    assert store.listing() == [] and store.active() is None
    store.put("vacation", "keep;\r\n")
    store.put("spam", "discard;")
    store.put("vacation", "stop;")  # replaces
    assert store.listing() == [("spam", False), ("vacation", False)]
    assert store.get("vacation") == "stop;"
    assert (store.maildir / "sieve" / "vacation.sieve").read_bytes() == b"stop;"
    assert oct((store.maildir / "sieve" / "spam.sieve").stat().st_mode & 0o777) == "0o600"
    assert sorted(os.listdir(store.folder)) == ["spam.sieve", "vacation.sieve"]  # no tmp files
    with pytest.raises(NoSuchScript):
        store.get("nope")


def test_active_link_rename_delete(store):
    store.put("a", "keep;")
    store.put("b", "keep;")
    store.set_active("a")
    assert os.readlink(store.maildir / ".dovecot.sieve") == "sieve/a.sieve"
    assert store.listing() == [("a", True), ("b", False)]
    assert active_script_text(store.maildir) == "keep;"
    with pytest.raises(ScriptActive):
        store.delete("a")
    with pytest.raises(ScriptExists):
        store.rename("b", "a")
    store.rename("a", "c")
    assert store.listing() == [("b", False), ("c", True)]
    assert os.readlink(store.maildir / ".dovecot.sieve") == "sieve/c.sieve"
    store.set_active("b")
    store.delete("c")
    store.set_active("")
    assert store.active() is None and active_script_text(store.maildir) is None
    store.set_active("")  # nothing active: fine
    with pytest.raises(NoSuchScript):
        store.set_active("c")
    with pytest.raises(NoSuchScript):
        store.rename("c", "d")
    with pytest.raises(NoSuchScript):
        store.delete("c")
    assert store.listing() == [("b", False)]


def test_quotas(store):
    with pytest.raises(QuotaExceeded) as size:
        store.put("big", "k" * 51)
    assert size.value.code == "QUOTA/MAXSIZE"
    for name in "abc":
        store.put(name, "keep;")
    with pytest.raises(QuotaExceeded) as count:
        store.check_space("d", 1)
    assert count.value.code == "QUOTA/MAXSCRIPTS"
    store.check_space("a", 50)  # replacing does not add a script
    with pytest.raises(QuotaExceeded):
        store.put("d", "keep;")


def test_names_never_leave_the_folder(store, tmp_path):
    store.put("ok", "keep;")
    for bad in ("../../escape", "../ok", "/etc/passwd", ".dovecot"):
        with pytest.raises(BadScriptName):
            store.put(bad, "keep;")
        with pytest.raises(ScriptError):
            store.rename("ok", bad)
        with pytest.raises(ScriptError):
            store.get(bad)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["ok.sieve"]


def test_foreign_files_and_links_are_ignored(store):
    store.put("a", "keep;")
    (store.folder / "notes.txt").write_text("x")
    (store.folder / ".hidden.sieve").write_text("x")
    assert store.names() == ["a"]
    os.symlink("/etc/passwd", store.maildir / ".dovecot.sieve")
    assert store.active() is None and active_script_text(store.maildir) is None


def test_plain_dovecot_sieve_file_is_kept(store):
    store.put("a", "keep;")
    (store.maildir / ".dovecot.sieve").write_text("discard;")
    assert store.active() is None
    store.set_active("a")
    assert store.get("dovecot.orig") == "discard;"
    assert store.listing() == [("a", True), ("dovecot.orig", False)]
