"""The DATA sink (`cloudmail.smtp.spool`): where a message ends, what is stored, and when it is
refused — the same however the bytes are split across reads."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudmail.smtp import replies
from cloudmail.smtp.spool import MEMORY_LIMIT, DataSink, clear_spool


def run(tmp_path, chunks, max_size=10_000, max_line=1000, memory_limit=MEMORY_LIMIT):
    """Feed `chunks`; return (sink, bytes left after the end or None, stored bytes or None)."""
    sink = DataSink(tmp_path, max_size, max_line, memory_limit)
    leftover = None
    for index, chunk in enumerate(chunks):
        end = sink.feed(chunk)
        if end is not None:
            leftover = chunk[end:] + b"".join(chunks[index + 1:])
            break
    stored = None
    if sink.done and sink.rejection is None:
        stored = sink.finish().read_bytes()
    return sink, leftover, stored


def test_end_of_data_and_leftover(tmp_path):
    """Only CRLF.CRLF ends the data; the bytes after it are handed back as commands."""
    sink, leftover, stored = run(tmp_path, [b"a\r\nb\r\n.\r\nQUIT\r\n"])
    assert (leftover, stored, sink.size) == (b"QUIT\r\n", b"a\r\nb\r\n", 6)


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\n", b"\r\n.\r"])
def test_smuggling_endings_do_not_end_and_refuse(tmp_path, fake_end):
    """The smuggling variants end nothing; the message is refused for bare line ends."""
    sink, leftover, _ = run(tmp_path, [b"x" + fake_end + b"MAIL FROM:<e@e>\r\n.\r\n"])
    assert leftover == b""
    assert sink.rejection == replies.BARE_LINE_ENDING
    assert os.listdir(tmp_path) == []


def test_size_cap_and_long_line(tmp_path):
    """Over the size cap → 552 5.3.4; a line over the limit → 500 5.5.2; neither file stays."""
    big, _, _ = run(tmp_path, [b"y" * 50 + b"\r\n", b"y" * 50 + b"\r\n.\r\n"], max_size=60)
    assert big.rejection == replies.MESSAGE_TOO_BIG and big.done
    long, _, _ = run(tmp_path, [b"z" * 200_000 + b"\r\n.\r\n"], max_size=10**6)
    assert long.rejection == replies.DATA_LINE_TOO_LONG and long.done
    assert os.listdir(tmp_path) == []


def test_long_line_is_not_held_in_memory(tmp_path):
    """A huge line without a line end is written out, not buffered (bounded carry)."""
    sink = DataSink(tmp_path, 10_000_000, 10_000_000)
    for _ in range(40):
        assert sink.feed(b"q" * 100_000) is None
    assert len(sink._carry) <= 64 * 1024
    assert sink.feed(b"\r\n.\r\n") is not None
    assert sink.finish().size == 4_000_002


messages = st.lists(st.sampled_from([b"a", b".", b"..", b"\r\n", b"\r", b"\n", b"xyz", b" "]),
                    max_size=40).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(messages, st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=10),
       st.sampled_from([0, 5, MEMORY_LIMIT]))
def test_chunking_does_not_change_the_outcome(tmp_path_factory, body, sizes, memory_limit):
    """The same bytes split into arbitrary reads give the same end, refusal and stored bytes as
    one read, whether the message stays in memory or moves to a spool file on the way."""
    data = body + b"\r\n.\r\nNEXT"
    chunks, position, index = [], 0, 0
    while position < len(data):
        size = sizes[index % len(sizes)]
        chunks.append(data[position:position + size])
        position, index = position + size, index + 1
    folder = tmp_path_factory.mktemp("spool")
    whole, whole_left, whole_stored = run(folder, [data])
    split, split_left, split_stored = run(folder, chunks, memory_limit=memory_limit)
    assert (whole.rejection, whole_left, whole_stored) == (split.rejection, split_left,
                                                           split_stored)
    assert whole.done


def test_small_messages_stay_in_memory_big_ones_spill_to_a_file(tmp_path):
    """Under the memory limit no file is made; over it the message moves to one spool file,
    which the message's discard removes."""
    small = DataSink(tmp_path, 10**6, 1000, memory_limit=100)
    small.feed(b"a" * 50 + b"\r\n.\r\n")
    assert small.in_memory and os.listdir(tmp_path) == []
    assert small.finish().read_bytes() == b"a" * 50 + b"\r\n"
    big = DataSink(tmp_path, 10**6, 1000, memory_limit=100)
    big.feed(b"b" * 80 + b"\r\n" + b"c" * 80 + b"\r\n.\r\n")
    assert not big.in_memory and len(os.listdir(tmp_path)) == 1
    spooled = big.finish()
    assert spooled.read_bytes() == spooled.head(1000) == b"b" * 80 + b"\r\n" + b"c" * 80 + b"\r\n"
    spooled.discard()
    assert os.listdir(tmp_path) == []


def test_a_spool_file_that_cannot_be_made_refuses_with_451(tmp_path):
    """A missing or full spool folder does not crash the session: the message gets 451."""
    sink = DataSink(tmp_path / "missing", 10**6, 1000, memory_limit=10)
    assert sink.feed(b"x" * 20 + b"\r\n.\r\nQUIT\r\n") == 25
    assert sink.rejection == replies.LOCAL_ERROR


def test_clear_spool_removes_only_spool_files(tmp_path):
    """Start-up removes what a crash left in the spool, and nothing else."""
    (tmp_path / "data-1.eml").write_bytes(b"x")
    (tmp_path / "data-2.eml").write_bytes(b"x")
    (tmp_path / "keep.txt").write_bytes(b"x")
    assert clear_spool(tmp_path) == 2
    assert os.listdir(tmp_path) == ["keep.txt"]
