"""sandbox/classad.py against HTCondor's own ClassAd library (classad2, from the PyPI
`htcondor` wheel, a test-only dependency): what we write is what HTCondor writes, and
what either writes reads back the same in both."""

from __future__ import annotations

import math
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox import classad

classad2 = pytest.importorskip("classad2", reason="HTCondor's classad2 (pip install htcondor) is the oracle")
OLD = classad2.ParserType.Old

# Any text HTCondor can hold: every code point but NUL (no ClassAd string holds one) and
# lone surrogates (not text; see test_undecodable_bytes_go_through_unchanged).
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=40)
PIECES = ['\\', '"', "\n", "\r", "\r\n", " ", "\t", "é", "☃", "\u2028", "\x85", "\x0b", "\x1c", "=", "'", "a", "]", "[",
          ";", "\x7f", "\x01", "eval(", ")"]
NASTY = st.lists(st.sampled_from(PIECES), max_size=12).map("".join)
VALUES = st.one_of(TEXT, NASTY)
# A few hundred values a test in the host suite; SANDBOX_FUZZ_EXAMPLES=20000 for a long run.
EXAMPLES = int(os.environ.get("SANDBOX_FUZZ_EXAMPLES", "300"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None)


def printold(value: object) -> str:
    ad = classad2.ClassAd()
    ad["A"] = value
    return str(ad.printOld())


def oracle_reads(text: str) -> dict[str, object]:
    ad = classad2.parseOne(text, OLD)
    return {k: ad.eval(k) for k in ad.keys()}


@SETTINGS
@given(VALUES)
def test_a_string_is_written_byte_for_byte_as_htcondor_writes_it(value):
    if "\n" in value or "\r" in value:
        return  # HTCondor writes these raw, and cannot read its own output back: see below
    assert f"A = {classad.quote(value)}\n" == printold(value)


@SETTINGS
@given(VALUES)
def test_every_string_reads_back_the_same_in_htcondor_and_here_and_adds_no_attribute(value):
    text = f"A = {classad.quote(value)}\nB = 7\n"
    assert oracle_reads(text) == {"A": value, "B": 7}
    assert classad.parse(text) == {"A": value, "B": 7}


@SETTINGS
@given(VALUES)
def test_what_htcondor_writes_reads_here_as_htcondor_reads_it(value):
    text = printold(value) + "B = 7\n"
    if "\n" in value:
        # HTCondor's printOld writes a line break raw; its own parser then loses the
        # whole ad. That is why classad.quote does not write one.
        try:
            lost = oracle_reads(text) != {"A": value, "B": 7}
        except ValueError:  # "Unable to parse input stream into a ClassAd"
            lost = True
        assert lost
        return
    assert classad.parse(text) == oracle_reads(text) == {"A": value, "B": 7}


@SETTINGS
@given(VALUES)
def test_new_syntax_literal_is_htcondors(value):
    assert classad.quote_new(value) == classad2.quote(value)
    assert classad2.unquote(classad.quote_new(value)) == value


@SETTINGS
@given(st.one_of(st.floats(), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.booleans()))
def test_numbers_and_booleans_as_htcondor_writes_them(value):
    assert f"A = {classad.quote(value)}\n" == printold(value)
    back = classad.parse(printold(value))["A"]
    assert type(back) is type(value) and (back == oracle_reads(printold(value))["A"] or math.isnan(back))


def test_old_syntax_escaping_examples():
    # the values that used to double or lose their backslashes
    for value, written in [("C:\\dir", '"C:\\dir"'), ("a\\", '"a\\"'), ('a\\"b', '"a\\\\"b"'),
                           ('say "hi"\\', '"say \\"hi\\"\\"'), ("x\ny", 'eval("\\"x\\ny\\"")')]:
        assert classad.quote(value) == written
        assert classad.parse(f"A = {written}\n")["A"] == value
        assert oracle_reads(f"A = {written}\n")["A"] == value


LABEL_KEY = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,10}", fullmatch=True)


@settings(max_examples=max(EXAMPLES // 5, 50), deadline=None)
@given(st.dictionaries(LABEL_KEY, TEXT, max_size=6), st.one_of(st.none(), VALUES), st.one_of(st.none(), TEXT))
def test_a_whole_report_reads_in_htcondor_as_its_attributes(labels, error, name):
    report = {"exit_code": 0, "status": "exited", "cpu_user_seconds": 1.5, "cpu_system_seconds": 0.25,
              "memory_peak_bytes": 5 * 2**20 + 1, "cpu_limit_cpus": 1 / 3, "error": error, "name": name,
              "labels": labels}
    try:
        expected = classad.attributes(report)
    except ValueError as e:
        assert "same ClassAd attribute" in str(e)
        return
    text = classad.format_report(report)
    got = oracle_reads(text)
    assert {k.lower(): v for k, v in got.items()} == {k.lower(): v for k, v in expected.items()}
    assert classad.parse(text) == expected


@SETTINGS
@given(st.lists(st.sampled_from(['"', "\\", "a", " ", "\t", "é", "+", "1", ";"]), max_size=10).map("".join))
def test_the_reader_takes_a_quoted_value_exactly_when_htcondor_does(tail):
    line = f'A = "{tail}\n'
    try:
        theirs = classad2.parseOne(line, OLD).get("A")
    except ValueError:
        theirs = None
    ours = classad.parse(line).get("A")
    # HTCondor ignores what follows a complete value (`A = "x" junk` reads "x"); this
    # reader keeps such a line as an Expr instead. A string it returns is HTCondor's.
    if not isinstance(ours, classad.Expr):
        assert ours == theirs
    if isinstance(theirs, str) and printold(theirs) == line:
        assert ours == theirs


def load_wrapper():  # a script without .py: loaded by path
    import importlib.machinery
    import importlib.util
    from pathlib import Path

    path = str(Path(__file__).resolve().parents[2] / "helpers" / "condor-job-wrapper")
    loader = importlib.machinery.SourceFileLoader("condor_job_wrapper", path)
    spec = importlib.util.spec_from_loader("condor_job_wrapper", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


WRAPPER = load_wrapper()


@pytest.fixture(scope="module")
def ad_file(tmp_path_factory):
    return tmp_path_factory.mktemp("ad") / "x.ad"


@settings(max_examples=EXAMPLES, deadline=None)
@given(value=VALUES)
def test_the_wrapper_reads_ads_and_quotes_for_chirp_as_htcondor_does(ad_file, value):
    ad = ad_file
    texts = [f"A = {classad.quote(value)}\nB = 7\n"]
    if "\n" not in value:  # HTCondor's own raw line break is unreadable to HTCondor too
        texts.append(printold(value) + "B = 7\n")
    for text in texts:
        ad.write_text(text)
        pairs, error = WRAPPER.read_ad(str(ad))
        assert error is None and dict(pairs) == classad.parse(text) == {"A": value, "B": 7}
    assert WRAPPER.quote_new(value) == classad2.quote(value)
    assert classad2.ExprTree(WRAPPER.new_syntax(value)).eval() == value  # what the starter makes of a chirp


@pytest.mark.parametrize("name,prefixes,allowed", [
    ("ChirpSandboxStatus", "Chirp*", True), ("chirpsandboxstatus", "Chirp*", True),
    ("ChirpSandboxStatus", "Site*, Other*", False), ("ChirpSandboxStatus", "Site* *Status", True),
    ("ChirpSandboxStatus", "ChirpSandboxStatus", True), ("ChirpSandboxStatusX", "ChirpSandboxStatus", False),
    ("ChirpSandbox.x", "Chirp?andbox*", False),
])
def test_the_wrapper_applies_chirp_delayed_update_prefix_as_the_starter(name, prefixes, allowed):
    assert WRAPPER.prefix_allows(name, prefixes) is allowed
