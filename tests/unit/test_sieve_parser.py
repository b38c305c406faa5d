"""The Sieve grammar (RFC 5228 section 8): tokens, strings, structure, errors with positions."""

from __future__ import annotations

import time

import pytest

from cloudmail.sieve.ast import Command, Number, Position, SieveError, StringList, Tag
from cloudmail.sieve.ast import Test as Node
from cloudmail.sieve.parser import MAX_NESTING, MAX_SCRIPT_SIZE, parse


def only_command(text: str) -> Command:
    script = parse(text)
    assert len(script.commands) == 1
    return script.commands[0]


def first_string(text: str) -> str:
    argument = only_command(text).arguments[-1]
    assert isinstance(argument, StringList)
    return argument.values[0]


# -- structure

def test_empty_scripts():
    """Nothing, blanks and comments are valid scripts with no commands."""
    for text in ["", "   \r\n\t", "# only a comment", "/* a */ /* b\n c */", "#x\r\n#y"]:
        script = parse(text)
        assert script.commands == () and script.requires == ()


def test_command_with_tags_numbers_and_strings():
    command = only_command('vacation :days 7 :addresses ["a@x", "b@x"] "gone";')
    assert command.name == "vacation"
    assert command.position == Position(1, 1)
    days, number, addresses, values, reason = command.arguments
    assert days == Tag("days", Position(1, 10))
    assert number == Number(7, Position(1, 16))
    assert addresses == Tag("addresses", Position(1, 18))
    assert values == StringList(("a@x", "b@x"), Position(1, 29), False)
    assert reason == StringList(("gone",), Position(1, 44), True)
    assert command.tests == () and command.block is None


def test_if_elsif_else_structure():
    script = parse('if true { keep; }\nelsif false { discard; stop; }\nelse { }\n')
    names = [c.name for c in script.commands]
    assert names == ["if", "elsif", "else"]
    first, second, third = script.commands
    assert first.tests == (Node("true", (), (), Position(1, 4)),)
    assert [c.name for c in first.block] == ["keep"]
    assert [c.name for c in second.block] == ["discard", "stop"]
    assert second.position == Position(2, 1)
    assert third.block == ()


def test_nested_tests_and_test_lists():
    command = only_command('if anyof (not exists "x", allof (true, size :over 10K)) { }')
    (anyof,) = command.tests
    assert anyof.name == "anyof" and len(anyof.tests) == 2
    negation, allof = anyof.tests
    assert negation.name == "not" and negation.tests[0].name == "exists"
    assert negation.tests[0].arguments[0].values == ("x",)
    assert [t.name for t in allof.tests] == ["true", "size"]
    assert allof.tests[1].arguments[1] == Number(10240, Position(1, 51))


def test_names_are_case_insensitive():
    command = only_command('IF Header :IS "a" "b" { FileInto "x"; }')
    assert command.name == "if"
    assert command.tests[0].name == "header"
    assert command.tests[0].arguments[0].name == "is"
    assert command.block[0].name == "fileinto"


@pytest.mark.parametrize("text, value", [
    ("0", 0), ("1", 1), ("42", 42), ("1K", 1024), ("1k", 1024), ("2M", 2 * 1024 ** 2),
    ("3g", 3 * 1024 ** 3), ("007", 7), ("1000000", 1000000),
])
def test_numbers_and_quantifiers(text, value):
    command = only_command(f"x {text};")
    assert command.arguments == (Number(value, Position(1, 3)),)


def test_requires_collected_in_order_once():
    script = parse('require "fileinto";\nrequire ["copy", "fileinto"];\r\nrequire ["body"];\nkeep;')
    assert script.requires == ("fileinto", "copy", "body")
    assert [c.name for c in script.commands] == ["require", "require", "require", "keep"]


def test_positions_count_characters_and_crlf():
    script = parse('keep;\r\n  # comment\r\n\tdiscard;\r\n /* x\r\n */ stop;')
    assert [c.position for c in script.commands] == [Position(1, 1), Position(3, 2),
                                                      Position(5, 5)]


def test_unicode_columns():
    script = parse('fileinto "héllo"; keep;')
    assert script.commands[1].position == Position(1, 19)


# -- strings

@pytest.mark.parametrize("source, value", [
    (r'"plain"', "plain"),
    (r'""', ""),
    (r'"a\"b"', 'a"b'),
    (r'"a\\b"', "a\\b"),
    (r'"\\\\"', "\\\\"),
    (r'"a\qb"', "aqb"),
    (r'"\n\t"', "nt"),
    (r'"end\\"', "end\\"),
    ('"two\r\nlines"', "two\r\nlines"),
    ('"bare\nlf"', "bare\nlf"),
    ('"# not a comment /* no */"', "# not a comment /* no */"),
    ('"${hex:41}"', "${hex:41}"),  # not decoded without encoded-character
    ('"ünïcödé"', "ünïcödé"),
])
def test_quoted_strings(source, value):
    assert first_string(f"x {source};") == value


@pytest.mark.parametrize("source, value", [
    ("text:\r\nhello\r\n.\r\n", "hello\r\n"),
    ("text:\nhello\n.\n", "hello\n"),
    ("text:   \t\nhello\n.\n", "hello\n"),
    ("text: # a comment\nhello\n.\n", "hello\n"),
    ("text:\n.\n", ""),
    ("text:\n..\n.\n", ".\n"),
    ("text:\n..dot\n.x\n.\n", ".dot\nx\n"),
    ("text:\nl1\nl2\n\nl4\n.\n", "l1\nl2\n\nl4\n"),
    ('text:\n"quoted" \\ # /* kept */\n.\n', '"quoted" \\ # /* kept */\n'),
    ("TEXT:\nupper\n.\n", "upper\n"),
    ("text:\n .\n.\n", " .\n"),
])
def test_multiline_strings(source, value):
    assert first_string(f"x {source};") == value


def test_multiline_string_then_more_commands():
    script = parse('vacation text:\nbye\n.\n;\nkeep;')
    assert script.commands[0].arguments[0].values == ("bye\n",)
    assert script.commands[1].position == Position(5, 1)


def test_multiline_string_in_list_and_at_end_of_script():
    command = only_command('x [text:\na\n.\n, "b"];')
    assert command.arguments[0].values == ("a\n", "b")
    assert parse("x text:\na\n.\n;").commands[0].arguments[0].values == ("a\n",)
    with pytest.raises(SieveError, match='expected ";"') as info:
        parse("x text:\na\n.")  # the string ends with the script: then ";" is missing
    assert info.value.position == Position(3, 2)


@pytest.mark.parametrize("source, value", [
    ('"${hex:41}"', "A"),
    ('"${HEX: 41 42 }"', "AB"),
    ('"${hex:4}"', "\x04"),
    ('"${hex:c3 a9}"', "é"),
    ('"${hex:c3}${hex:a9}"', "é"),
    ('"${unicode:e9}"', "é"),
    ('"${Unicode:1F600}"', "\U0001F600"),
    ('"${unicode:41 42 0043}"', "ABC"),
    ('"a${hex:20}b"', "a b"),
    ('"${hex:}"', "${hex:}"),
    ('"${hex:xyz}"', "${hex:xyz}"),
    ('"${hex:414}"', "${hex:414}"),
    ('"${other:41}"', "${other:41}"),
    ('"${hex:24}{hex:24}"', "${hex:24}"),
    ('"$${hex:41}"', "$A"),
    ('text:\n${hex:41}\n.\n', "A\n"),
])
def test_encoded_characters(source, value):
    script = parse(f'require "encoded-character";\nx {source};')
    assert script.commands[1].arguments[0].values[0] == value


@pytest.mark.parametrize("source, message", [
    ('"${unicode:D800}"', 'invalid Unicode character "D800"'),
    ('"${unicode:110000}"', 'invalid Unicode character "110000"'),
    ('"${hex:ff}"', "not UTF-8"),
    ('"${hex:c3}x${hex:a9}"', "not UTF-8"),
])
def test_bad_encoded_characters(source, message):
    with pytest.raises(SieveError, match=message) as info:
        parse(f'require "encoded-character";\nx {source};')
    assert info.value.position == Position(2, 3)


# -- errors, each with its position

@pytest.mark.parametrize("text, line, column, message", [
    ("keep", 1, 5, 'expected ";" or "{" after the arguments of "keep"'),
    ('require "fileinto";\nif true {\n  fileinto "x"\n    }', 4, 5,
     'expected ";" or "{" after the arguments of "fileinto"'),
    ('fileinto "x" ]', 1, 14, 'expected ";" or "{" after the arguments of "fileinto"'),
    ("if true {", 1, 10, 'expected "}" to close the block of "if" opened at line 1, column 9'),
    ("if true { if false { keep; }", 1, 29, 'expected "}"'),
    ("keep; }", 1, 7, 'unexpected "}" without a matching "{"'),
    ('"x";', 1, 1, "expected a command, found a string"),
    ("[", 1, 1, 'expected a command, found "["'),
    (":tag;", 1, 1, 'expected a command, found tag ":tag"'),
    ("12;", 1, 1, "expected a command, found a number"),
    (";", 1, 1, 'expected a command, found ";"'),
    ('x ["a" "b"];', 1, 8, 'expected "," or "]" in the string list, found a string'),
    ('x ["a",];', 1, 8, 'expected a string in the string list, found "]"'),
    ("x [];", 1, 4, 'expected a string in the string list, found "]"'),
    ('x ["a", 1];', 1, 9, "expected a string in the string list, found a number"),
    ('x ["a"', 1, 7, 'expected "," or "]" in the string list, found the end of the script'),
    ("if anyof (true; false) {}", 1, 15, "expected \",\" or \")\" in the test list"),
    ("if anyof () {}", 1, 11, 'expected a test, found ")"'),
    ("if anyof (true, ) {}", 1, 17, 'expected a test, found ")"'),
    ('if anyof (true, "x") {}', 1, 17, "expected a test, found a string"),
    ("if anyof (true {}", 1, 16, 'expected "," or ")" in the test list, found "{"'),
    ("/* never closed", 1, 1, 'unterminated comment: missing "*/"'),
    ("keep;\n  /* never\nclosed", 2, 3, "unterminated comment"),
    ('x "never closed;', 1, 3, "unterminated string"),
    ('x "ends with escape\\"', 1, 3, "unterminated string"),
    ("x text:\nno end\n", 1, 3, "unterminated multi-line string"),
    ("x text:\nno end\n. \n", 1, 3, "unterminated multi-line string"),
    ("x text: junk\n.\n", 1, 9, 'expected the end of the line after "text:"'),
    ("x text:", 1, 8, 'expected the end of the line after "text:"'),
    ("keep; @", 1, 7, "unexpected character '@'"),
    ("keep;\n\n   $", 3, 4, "unexpected character '$'"),
    ("x 1.5;", 1, 4, "unexpected character '.'"),
    ("x 99999999999999999999;", 1, 3, "number too large"),
    ("x 9999999999G;", 1, 3, "number too large"),
    ('keep;\nrequire "fileinto";', 2, 1, '"require" must come before any other command'),
    ('if true { require "fileinto"; }', 1, 11, '"require" must come before'),
    ("require;", 1, 1, '"require" takes one string or string list'),
    ("require 1;", 1, 1, '"require" takes one string or string list'),
    ('require "a" "b";', 1, 1, '"require" takes one string or string list'),
    ('require "a" true;', 1, 1, '"require" takes one string or string list'),
    ('require "a" { }', 1, 1, '"require" takes one string or string list'),
    ("/* a */ */", 1, 9, "unexpected character '*'"),
    ("x :;", 1, 3, "unexpected character ':'"),
])
def test_syntax_errors(text, line, column, message):
    with pytest.raises(SieveError) as info:
        parse(text)
    assert info.value.position == Position(line, column)
    assert message in info.value.message
    assert str(info.value).startswith(f"line {line}, column {column}: ")


def test_error_message_format():
    with pytest.raises(SieveError) as info:
        parse('require "fileinto";\nif true {\n    fileinto "x"\n    keep;\n}\n}')
    # "keep" is read as a test of "fileinto" (the grammar allows it); the checker refuses it.
    assert str(info.value) == 'line 6, column 1: unexpected "}" without a matching "{"'


# -- limits and speed

def test_script_size_limit():
    parse("#" + "x" * (MAX_SCRIPT_SIZE - 10))
    with pytest.raises(SieveError, match="larger than"):
        parse("#" + "x" * MAX_SCRIPT_SIZE)
    with pytest.raises(SieveError, match="larger than"):
        parse("#" + "é" * (MAX_SCRIPT_SIZE // 2 + 1))


def test_nesting_limit_for_blocks():
    ok = "if true {" * (MAX_NESTING - 1) + "}" * (MAX_NESTING - 1)
    parse(ok)
    deep = "if true {" * (MAX_NESTING + 1) + "}" * (MAX_NESTING + 1)
    with pytest.raises(SieveError, match="nested more than"):
        parse(deep)


def test_nesting_limit_for_tests():
    with pytest.raises(SieveError, match="nested more than"):
        parse("if " + "not " * 200 + "true {}")
    with pytest.raises(SieveError, match="nested more than"):
        parse("if " + "anyof(" * 200 + "true" + ")" * 200 + " {}")
    with pytest.raises(SieveError, match="nested more than"):
        parse("if " + "anyof(" * 100_000 + "true" + ")" * 100_000 + " {}")


def test_large_script_is_fast():
    rule = ('if header :contains ["subject", "from"] ["spam", "offer"] '
            '{ fileinto "Junk"; stop; } # comment\n')
    text = 'require "fileinto";\n' + rule * (100_000 // len(rule))
    start = time.perf_counter()
    script = parse(text)
    elapsed = time.perf_counter() - start
    assert len(script.commands) > 1000
    assert elapsed < 0.5  # typically ~50 ms


def test_many_lines_positions():
    text = "keep;\n" * 5000 + "oops"
    with pytest.raises(SieveError) as info:
        parse(text)
    assert info.value.position == Position(5001, 5)
