"""The Sieve dry run: `dry_run` itself for every kind of action line, `cloudmail-admin sieve test`
as the real command in a subprocess (a few calls: each costs about half a second), and
`POST /api/v1/sieve/test` over a real socket."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from cloudmail.admin.api import AdminApi
from cloudmail.sieve.dryrun import dry_run
from tests.integration.test_admin_api import Client, declared_statuses

ME = "alice@example.com"
BOB = "bob@example.org"
MESSAGE = (
    "From: Bob <bob@example.org>\r\n"
    "To: Alice <alice@example.com>\r\n"
    "Subject: Lunch\r\n"
    "Message-ID: <1@example.org>\r\n"
    "\r\n"
    "Lunch at noon?\r\n"
)
NOW = datetime(2025, 5, 1, 12, 0, tzinfo=timezone.utc)


def lines(script: str, message: str = MESSAGE, sender: str = BOB, recipient: str = ME,
          **kw) -> list[str]:
    result = dry_run(script, message.encode("utf-8"), sender, recipient, now=NOW, **kw)
    assert result.error is None, result.error
    return result.lines


def with_header(header: str) -> str:
    return MESSAGE.replace("Subject:", header + "\r\nSubject:", 1)


# dry_run: each kind of line


@pytest.mark.parametrize("script, expected", [
    ("", ["keep"]),
    ('require "imap4flags"; addflag ["$Label1 \\\\seen", "\\\\Answered"]; keep;',
     ['keep flags="\\\\Seen \\\\Answered $Label1"']),
    ('require "imap4flags"; setflag "\\\\Draft Work \\\\Flagged";',
     ['keep flags="\\\\Flagged \\\\Draft Work"']),
    ('require ["fileinto", "mailbox", "imap4flags"];\n'
     'fileinto :create :flags ["Later", "\\\\Seen"] "Lists/Cats";',
     ['fileinto "Lists/Cats" create flags="\\\\Seen Later"']),
    ('require ["fileinto", "copy"]; fileinto :copy "Archive";',
     ['fileinto "Archive"', "keep"]),
    ('redirect "carol@example.net";', ['redirect "carol@example.net"']),
    ('redirect "alice@example.com";',
     ['redirect "alice@example.com" suppressed="mail-loop"', "keep"]),
    ("discard;", ["discard"]),
    ('require "reject"; reject "Not here";', ['reject "Not here"']),
    ('require "ereject"; ereject "Go away";', ['reject "Go away"']),
    ('require "enotify"; notify :from "robot@example.com" :importance "1" :message "New mail"\n'
     '  "mailto:a@example.net,b@example.net?cc=c@example.net";',
     ['notify method="mailto" from="robot@example.com" importance=1 message="New mail" '
      'to="a@example.net,b@example.net" cc="c@example.net"', "keep"]),
    ('require "enotify"; notify "mailto:a@example.net";',
     ['notify method="mailto" to="a@example.net"', "keep"]),
])
def test_action_lines(script, expected):
    assert lines(script) == expected


def test_values_are_quoted_with_escapes():
    """Backslash, double quote, newline and tab are escaped inside the double quotes."""
    script = 'require "reject"; reject "a \\\\ b \\" c\nd\te";'
    assert lines(script) == ['reject "a \\\\ b \\" c\\nd\\te"']


def test_vacation_lines():
    """The reply as delivery would send it: to the sender, from the recipient, "Auto: " and the
    subject, the interval in seconds (7 days by default), the handle only when given."""
    assert lines('require "vacation"; vacation "Back on Monday";') == [
        f'vacation to="{BOB}" from="{ME}" subject="Auto: Lunch" seconds=604800 '
        'reason="Back on Monday"', "keep"]
    assert lines('require "vacation";\n'
                 'vacation :days 3 :subject "Away" :from "al@example.com" :handle "h1" "Away";'
                 ) == [f'vacation to="{BOB}" from="al@example.com" subject="Away" '
                       'seconds=259200 handle="h1" reason="Away"', "keep"]
    assert lines('require ["vacation", "vacation-seconds"]; vacation :seconds 3600 "brb";\n'
                 "discard;") == [
        f'vacation to="{BOB}" from="{ME}" subject="Auto: Lunch" seconds=3600 reason="brb"',
        "discard"]


@pytest.mark.parametrize("why, message, sender", [
    ("mailing-list", with_header("List-Id: <cats.lists.example.org>"), BOB),
    ("auto-submitted", with_header("Auto-Submitted: auto-replied"), BOB),
    ("precedence", with_header("Precedence: bulk"), BOB),
    ("auto-response-suppress", with_header("X-Auto-Response-Suppress: OOF"), BOB),
    ("system-address", MESSAGE, ""),
    ("system-address", MESSAGE, "<>"),
    ("system-address", MESSAGE, "MAILER-DAEMON@example.org"),
    ("own-address", MESSAGE, ME),
    ("not-addressed", MESSAGE.replace("alice@example.com", "team@example.com"), BOB),
])
def test_vacation_suppressed(why, message, sender):
    assert lines('require "vacation"; vacation "away";', message, sender) == [
        f'vacation suppressed="{why}"', "keep"]


def test_fresh_mailbox_has_inbox_junk_and_archive():
    script = ('require ["fileinto", "mailbox"];\n'
              'if mailboxexists ["inbox", "Junk", "Archive"] { fileinto "Junk"; }\n'
              'if mailboxexists "Other" { fileinto "Other"; }\n')
    assert lines(script) == ['fileinto "Junk"']


def test_compile_error():
    result = dry_run('require "fileinto";\nif true {\n  frobnicate;\n}\n', MESSAGE.encode(),
                     BOB, ME)
    assert result.lines == ["error: compile"]
    assert (result.error.position.line, result.error.position.column) == (3, 3)
    assert "frobnicate" in result.error.message
    assert result.as_json() == {"actions": ["error: compile"], "error": {
        "line": 3, "column": 3, "message": result.error.message}}


def test_runtime_error_keeps():
    """A failure at run time drops what the script did and keeps the message."""
    result = dry_run('require "reject"; redirect "carol@example.net"; keep; reject "no";',
                     MESSAGE.encode(), BOB, ME)
    assert result.lines == ["error: runtime", "keep"]
    assert result.error is None and "reject" in result.runtime_error
    assert result.as_json() == {"actions": ["error: runtime", "keep"], "error": None}


def test_include_from_personal_and_global_folders(tmp_path):
    personal, global_ = tmp_path / "personal", tmp_path / "global"
    personal.mkdir()
    global_.mkdir()
    (personal / "lists.sieve").write_text(
        'require "fileinto"; if exists "List-Id" { fileinto "Lists"; }\n', "utf-8")
    (global_ / "spam.sieve").write_text(
        'require "fileinto"; if header :contains "Subject" "Lunch" { fileinto "Junk"; }\n',
        "utf-8")
    (global_ / "broken.sieve").write_text("frobnicate;\n", "utf-8")
    script = ('require "include";\ninclude "lists";\ninclude :global "spam";\n'
              'include :optional "missing";\ninclude :global :optional "missing";\n')
    assert lines(script, with_header("List-Id: <x.example.org>"), personal=personal,
                 global_=global_) == ['fileinto "Lists"', 'fileinto "Junk"']
    # A missing script (or folder, or a name that cannot be a script) fails the run unless
    # :optional; one that does not compile always does.
    for include in ('include "missing";', 'include :global "lists";', 'include "../global/spam";',
                    'include :global "broken";'):
        assert lines(f'require "include"; {include}', personal=personal, global_=global_) == [
            "error: runtime", "keep"], include
    assert lines('require "include"; include :optional "lists"; discard;') == ["discard"]
    assert lines('require "include"; include :optional "../global/spam";', personal=personal,
                 global_=global_) == ["keep"]


# The command line


def admin(*args: str, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`cloudmail-admin ARGS...` without a config: the dry run needs none."""
    return subprocess.run([sys.executable, "-m", "cloudmail.admin.cli", *args], cwd=cwd,
                          input=stdin, capture_output=True, text=True, timeout=120)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "mail.eml").write_text(MESSAGE.replace("\r\n", "\n"), "utf-8")
    (tmp_path / "personal").mkdir()
    (tmp_path / "personal" / "flags.sieve").write_text(
        'require "imap4flags"; addflag "\\\\Flagged";\n', "utf-8")
    (tmp_path / "global").mkdir()
    (tmp_path / "global" / "archive.sieve").write_text(
        'require ["fileinto", "copy"]; fileinto :copy "Archive";\n', "utf-8")
    return tmp_path


def test_cli_prints_one_action_per_line(files):
    """Includes from --personal and --global; the implicit keep comes last, with its flags; no
    config, data folder or server is needed."""
    (files / "filter.sieve").write_text(
        'require ["include", "vacation", "enotify"];\ninclude "flags";\n'
        'include :global "archive";\ninclude :optional "none";\n'
        'notify "mailto:pager@example.com";\nvacation :days 2 "Out \\"today\\"";\n', "utf-8")
    done = admin("sieve", "test", "filter.sieve", "mail.eml", "--from", BOB, "--to", ME,
                 "--personal", "personal", "--global", "global", cwd=files)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == [
        'fileinto "Archive" flags="\\\\Flagged"',
        'notify method="mailto" to="pager@example.com"',
        f'vacation to="{BOB}" from="{ME}" subject="Auto: Lunch" seconds=172800 '
        'reason="Out \\"today\\""',
        'keep flags="\\\\Flagged"',
    ]
    assert not (files / "data").exists()


def test_cli_compile_error_json_and_runtime_error(files):
    (files / "bad.sieve").write_text('require "fileinto";\n\nif true {\n  frob "x";\n}\n',
                                     "utf-8")
    done = admin("sieve", "test", "bad.sieve", "mail.eml", "--from", BOB, "--to", ME, cwd=files)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "error: compile\n"
    assert done.stderr.startswith('bad.sieve:4:3: unknown command "frob"')
    done = admin("--json", "sieve", "test", "bad.sieve", "-", "--from", "<>", "--to", ME,
                 cwd=files, stdin=MESSAGE)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"actions": ["error: compile"], "error": {
        "line": 4, "column": 3, "message": 'unknown command "frob"'}}
    # A run-time failure: the fallback keep; why is said on stderr. --json after the verb too.
    (files / "loop.sieve").write_text('require "include"; include "loop";\n', "utf-8")
    done = admin("sieve", "test", "loop.sieve", "mail.eml", "--from", BOB, "--to", ME,
                 "--personal", ".", "--json", cwd=files)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"actions": ["error: runtime", "keep"], "error": None}
    assert "runtime error" in done.stderr and "recursive" in done.stderr


def test_cli_unreadable_files_and_usage(files):
    (files / "ok.sieve").write_text("keep;\n", "utf-8")
    (files / "latin1.sieve").write_bytes(b'reject "caf\xe9";\n')
    for script, message in (("missing.sieve", "mail.eml"), ("ok.sieve", "missing.eml"),
                            ("latin1.sieve", "mail.eml")):
        done = admin("sieve", "test", script, message, "--from", BOB, "--to", ME, cwd=files)
        assert (done.returncode, done.stdout) == (1, ""), done.stderr
        assert "missing" in done.stderr or "UTF-8" in done.stderr
        assert "Traceback" not in done.stderr
    done = admin("sieve", "test", "ok.sieve", "mail.eml", "--to", ME, cwd=files)
    assert done.returncode == 2 and "--from" in done.stderr


# The admin API


@pytest.fixture
def api(container):
    """AdminApi with the token "secret" on a loopback port; every status seen must be declared
    in openapi.json (as in test_admin_api.py)."""
    admin = AdminApi(container)
    admin.token = "secret"
    port = reactor.listenTCP(0, admin.site(), interface="127.0.0.1")
    client = Client(f"http://127.0.0.1:{port.getHost().port}")
    yield client
    pytest_twisted.blockon(port.stopListening())
    undeclared = [(m, p, s) for m, p, s in client.seen
                  if (d := declared_statuses(m, p)) is not None and str(s) not in d]
    assert not undeclared, f"statuses not declared in openapi.json: {undeclared}"


def body(script: str, **changes) -> dict:
    return {"script": script, "message": MESSAGE, "from": BOB, "to": ME, **changes}


@pytest_twisted.ensureDeferred
async def test_api_dry_run(api):
    answer = await api.post("/api/v1/sieve/test", body(
        'require ["fileinto", "imap4flags", "vacation"];\n'
        'if header :contains "subject" "lunch" { addflag "\\\\Seen"; }\n'
        'vacation :handle "v" "Away";\nredirect "alice@example.com";\n'))
    assert answer.status == 200, answer.raw
    assert answer.json == {"actions": [
        f'vacation to="{BOB}" from="{ME}" subject="Auto: Lunch" seconds=604800 handle="v" '
        'reason="Away"',
        'redirect "alice@example.com" suppressed="mail-loop"',
        'keep flags="\\\\Seen"'], "error": None}

    answer = await api.post("/api/v1/sieve/test", body("keep;\nstop", **{"from": "<>"}))
    assert answer.status == 200
    assert answer.json == {"actions": ["error: compile"], "error": {
        "line": 2, "column": 5, "message": answer.json["error"]["message"]}}

    answer = await api.post("/api/v1/sieve/test", body('require "vacation"; vacation "x";',
                                                       message=with_header("List-Id: <l>")))
    assert answer.json["actions"] == ['vacation suppressed="mailing-list"', "keep"]

    answer = await api.post("/api/v1/sieve/test", body('require "include"; include "x";'))
    assert answer.json == {"actions": ["error: runtime", "keep"], "error": None}


@pytest_twisted.ensureDeferred
async def test_api_dry_run_checks_its_fields(api):
    answer = await api.post("/api/v1/sieve/test", {"script": "keep;", "message": MESSAGE,
                                                   "from": BOB})
    assert (answer.status, answer.error_field) == (422, "to")
    answer = await api.post("/api/v1/sieve/test", body("keep;", extra=1))
    assert (answer.status, answer.error_field) == (422, "extra")
    answer = await api.post("/api/v1/sieve/test", body(["keep;"]))
    assert (answer.status, answer.error_field) == (400, "script")
    answer = await api.post("/api/v1/sieve/test", raw=b"[]")
    assert (answer.status, answer.error_field) == (400, "body")
    answer = await api.post("/api/v1/sieve/test", raw=b'{"script": "keep;", "message": "\\ud800",'
                            b' "from": "", "to": "a@b.c"}')
    assert (answer.status, answer.error_field) == (400, "message")
    answer = await api.post("/api/v1/sieve/test", body("keep;"), token=None)
    assert answer.status == 401
