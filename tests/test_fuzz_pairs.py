"""The pairs loader under fuzzing and its edge cases: every bad file is one WorkbenchError naming the file, the line
and the field; texts longer than the model's context are refused at collection, never truncated."""

import json
import os

import pytest

import workbench.pairs
from tests.fuzzing.pairs import run
from workbench.activations import collect_pairs, pair_spans
from workbench.errors import WorkbenchError
from workbench.models import tokenizer_of
from workbench.pairs import ContrastPair, ContrastPairs, load_pairs
from workbench.tokens import tokenize

GOOD = '{"positive": "good", "negative": "bad"}'


def write(tmp_path, data, name="p.jsonl"):
    p = tmp_path / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))
    return p


def test_fuzzed_files_give_no_raw_exception_and_no_silent_acceptance(tmp_path):
    r = run(300, seed=0, workdir=tmp_path)
    assert (r["raw_exception"], r["silent_acceptance"], r["refused_valid"]) == (0, 0, 0), r["examples"]
    assert r["accepted_valid"] > 30 and r["refused"] > 100  # the mutations reach both outcomes


def test_fuzzing_is_deterministic(tmp_path):
    assert run(40, seed=3, workdir=tmp_path / "a") == run(40, seed=3, workdir=tmp_path / "b")


def test_utf8_bom_is_accepted(tmp_path):
    pairs = load_pairs(write(tmp_path, b"\xef\xbb\xbf" + GOOD.encode() + b"\r\n"))
    assert pairs.pairs[0].texts == ("good", "bad")
    assert load_pairs(write(tmp_path, b"\xef\xbb\xbf[" + GOOD.encode() + b"]", "a.json")).pairs[0].positive == "good"


@pytest.mark.parametrize(
    "line, match",
    [
        ('{"positive": "\\ud800", "negative": "bad"}', r"p.jsonl:3: positive: contains a lone surrogate \\ud800"),
        ('{"positive": "good", "negative": "a\\udc00"}', r"p.jsonl:3: negative: contains a lone surrogate \\udc00"),
        ('{"positive": "good", "negative": "\\ude00\\ud83d"}', r"p.jsonl:3: negative: contains a lone surrogate"),
        ('{"positive": "good", "negative": "bad", "promt": "x"}', r"p.jsonl:3: promt: extra inputs are not permitted"),
        ('{"positive": true, "negative": "bad"}', r"p.jsonl:3: positive: must be a string.*got True"),
        ('{"positive": "good", "negative": "bad", "prompt": null}', r"p.jsonl:3: prompt: must be a string"),
        ('{"positive": "good", "negative": 1e999}', r"p.jsonl:3: not valid JSON \(1e999 overflows"),
        ('{"positive": "good", "negative": NaN}', r"p.jsonl:3: not valid JSON"),
        ('{"positive": "good", "negative": ' + "[" * 40 + "]" * 40 + "}", r"p.jsonl:3: JSON nested deeper than"),
        ("[" * 5000 + "]" * 5000, r"p.jsonl:3: JSON nested deeper than"),
        ('"good"', r"p.jsonl:3: expected a JSON object, got a JSON string"),
        ("\x0c", r"p.jsonl:3: not valid JSON"),
        (
            '{"question": "q", "answer_matching_behavior": "a", "answer_not_matching_behavior": "b", "system": "s"}',
            r"p.jsonl:3: system: extra inputs are not permitted",
        ),
        (
            '{"question": "q", "answer_matching_behavior": "a", "answer_not_matching_behavior": "b", '
            '"label_confidence": true}',
            r"p.jsonl:3: label_confidence: input should be a valid number",
        ),
    ],
)
def test_bad_record_names_file_line_field_and_fix(tmp_path, line, match):
    with pytest.raises(WorkbenchError, match=match) as e:
        load_pairs(write(tmp_path, f"{GOOD}\n\n{line}\n"))
    assert str(e.value).endswith("or a CAA A/B item.")  # the fix


def test_surrogate_pair_escape_is_one_character(tmp_path):
    pairs = load_pairs(write(tmp_path, '{"positive": "\\ud83d\\ude00", "negative": "bad"}\n'))
    assert pairs.pairs[0].positive == "\U0001f600"


def test_invalid_utf8_names_the_line(tmp_path):
    for bad in (b"\xff", b"\xed\xa0\x80", b"\xc0\xaf"):  # a stray byte, an encoded surrogate, an overlong form
        with pytest.raises(WorkbenchError, match=r"p.jsonl:2: not UTF-8"):
            load_pairs(write(tmp_path, GOOD.encode() + b'\n{"positive": "' + bad + b'", "negative": "x"}\n'))


def test_caa_metadata_fields_are_accepted_and_ignored(tmp_path):
    item = {
        "question": "Is this something you would say?",
        "statement": "I like it.",
        "label_confidence": 0.97,
        "answer_matching_behavior": " Yes",
        "answer_not_matching_behavior": " No",
    }
    pairs = load_pairs(write(tmp_path, json.dumps(item) + "\n"))
    assert pairs.pairs[0] == ContrastPair(" Yes", " No", "Is this something you would say?")


def test_lines_are_split_on_newlines_only_and_carried(tmp_path):
    text = f'\n{GOOD}\r\n  \n{{"positive": "a\u2028b", "negative": "c\x85d"}}\n\t\n'
    pairs = load_pairs(write(tmp_path, text))
    assert [(p.positive, p.line) for p in pairs.pairs] == [("good", 2), ("a\u2028b", 4)]
    assert pairs.describe(1) == f"pair 1 ({pairs.source} line 4)"
    assert pairs.pairs[0] == ContrastPair("good", "bad")  # the line is not part of a pair's identity


def test_empty_texts_as_before(tmp_path):
    assert load_pairs(write(tmp_path, '{"positive": "a", "negative": "b", "prompt": ""}\n')).pairs[0].prompt == ""
    with pytest.raises(WorkbenchError, match=r"p.jsonl:1: .*non-empty"):
        load_pairs(write(tmp_path, '{"positive": "\\u3000", "negative": "b"}\n'))
    with pytest.raises(WorkbenchError, match="no contrast pairs"):
        load_pairs(write(tmp_path, "\ufeff\n \n"))


def test_directory_fifo_and_missing_file_are_named(tmp_path):
    with pytest.raises(WorkbenchError, match="is a directory"):
        load_pairs(tmp_path)
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(WorkbenchError, match=r"is a FIFO"):
        load_pairs(fifo)  # refused without opening it, so this does not block
    with pytest.raises(WorkbenchError, match="does not exist"):
        load_pairs(tmp_path / "nope.jsonl")
    (tmp_path / "link.jsonl").symlink_to(tmp_path)
    with pytest.raises(WorkbenchError, match="is a directory"):
        load_pairs(tmp_path / "link.jsonl")


def test_file_size_is_bounded_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(workbench.pairs, "MAX_JSON_BYTES", 100)
    load_pairs(write(tmp_path, GOOD + "\n"))
    with pytest.raises(WorkbenchError, match=r"larger than 100 bytes"):
        load_pairs(write(tmp_path, (GOOD + "\n") * 3))


def test_in_memory_pairs_refuse_lone_surrogates():
    with pytest.raises(WorkbenchError, match=r"ContrastPair.negative contains a lone surrogate \\ud800"):
        ContrastPairs.from_list([("good", "b\ud800")])
    with pytest.raises(WorkbenchError, match=r"item 0: positive: contains a lone surrogate"):
        ContrastPairs.from_list([{"positive": "\udfff", "negative": "b"}])


# ---------------------------------------------------------------------------------------------------- context


def test_text_longer_than_context_is_refused_with_pair_line_and_length(tmp_path, llama):
    n_ctx = llama.cfg.n_ctx
    long = " ".join(["word"] * (n_ctx + 20))
    rows = [{"positive": "good", "negative": "bad"}, {"prompt": "the", "positive": "fine", "negative": long}]
    path = write(tmp_path, "\n" + "\n".join(json.dumps(r) for r in rows) + "\n")
    pairs = load_pairs(path)
    tok = tokenizer_of(llama)
    length = len(tok("the " + long, truncation=False)["input_ids"])
    with pytest.raises(WorkbenchError) as e:
        collect_pairs(llama, pairs, progress=False)
    msg = str(e.value)
    assert f"pair 1 ({path} line 3): the negative text of" in msg
    assert f"exceeds the model's context of {n_ctx} tokens" in msg
    assert any(f" of {n} tokens" in msg for n in (length, length + 1))  # + a BOS where the policy adds one
    with pytest.raises(WorkbenchError, match=r"pair 0 of <memory>: the positive text of \d+ tokens exceeds"):
        pair_spans(llama, ContrastPairs.from_list([(long, "bad")]), "last")


def test_no_silent_truncation_even_when_the_tokenizer_truncates(llama):
    tok = tokenizer_of(llama)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        pytest.skip("a slow tokenizer has no backend truncation setting")
    long = " ".join(["word"] * (llama.cfg.n_ctx + 20))
    short = "the cat is good"
    before = tokenize(llama, short)
    backend.enable_truncation(8)
    try:
        with pytest.raises(WorkbenchError, match="exceeds the model's context"):
            tokenize(llama, long)
        assert tokenize(llama, short) == before  # texts that fit tokenise as before
    finally:
        backend.no_truncation()
