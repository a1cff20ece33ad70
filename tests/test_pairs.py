import json

import pytest

from workbench.errors import WorkbenchError
from workbench.pairs import ContrastPair, ContrastPairs, load_pairs


def write(tmp_path, text, name="p.jsonl"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_jsonl_pairs_with_and_without_prompt(tmp_path):
    p = write(
        tmp_path,
        '{"positive": "good", "negative": "bad", "prompt": "the cat is"}\n\n{"positive": "a b", "negative": "a c"}\n',
    )
    pairs = load_pairs(p)
    assert len(pairs) == 2
    assert pairs.pairs[0].texts == ("the cat is good", "the cat is bad")
    assert pairs.pairs[1].texts == ("a b", "a c")


def test_caa_ab_format_and_json_array(tmp_path):
    item = {"question": "Q?\n (A) yes (B) no", "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"}
    pairs = load_pairs(write(tmp_path, json.dumps([item, item]), "ab.json"))
    assert pairs.pairs[0] == ContrastPair("(A)", "(B)", "Q?\n (A) yes (B) no")
    assert pairs.pairs[0].texts[0] == "Q?\n (A) yes (B) no (A)"


def test_hash_ignores_formatting(tmp_path):
    a = load_pairs(write(tmp_path, '{"positive": "x", "negative": "y"}\n', "a.jsonl"))
    b = load_pairs(write(tmp_path, '{ "negative" : "y", "positive" : "x" }\n', "b.jsonl"))
    assert a.data_hash == b.data_hash


@pytest.mark.parametrize(
    "text, match",
    [
        ('{"positive": "x", "negative": "y"}\n{"positive": "x"\n', r"p.jsonl:2: not valid JSON"),
        ('{"positive": "x", "negative": "y"}\n{"positive": "x"}\n', r"p.jsonl:2: missing key 'negative'"),
        ('{"question": "q", "answer_matching_behavior": "(A)"}\n', r"p.jsonl:1: missing key 'answer_not_matching"),
        ('{"pos": "x", "neg": "y"}\n', r"p.jsonl:1: unknown format"),
        ('{"positive": "x", "negative": "x"}\n', r"p.jsonl:1: ContrastPair members are identical"),
        ('{"positive": "", "negative": "x"}\n', r"p.jsonl:1: .*non-empty"),
        ('{"positive": 3, "negative": "x"}\n', r"p.jsonl:1: .*must be a string"),
        ("[1, 2]", r"item 0: expected a JSON object"),
        ("\n\n", r"no contrast pairs"),
    ],
)
def test_bad_files_name_line_and_fix(tmp_path, text, match):
    with pytest.raises(WorkbenchError, match=match):
        load_pairs(write(tmp_path, text))


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(WorkbenchError, match="does not exist"):
        load_pairs(tmp_path / "nope.jsonl")
    bad = tmp_path / "bin.jsonl"
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(WorkbenchError, match="not UTF-8"):
        load_pairs(bad)


def test_from_list_tuples():
    pairs = ContrastPairs.from_list([("a", "b"), {"positive": "c", "negative": "d"}])
    assert [p.positive for p in pairs.pairs] == ["a", "c"]
