"""Dataset validation: every bad file is refused with a message naming the row, before any model;
exact duplicates are dropped and named instead."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.support.training import SMALL_SET, seed_like_rows, write_jsonl
from training.dataset import DatasetError, dataset_sha256, load_examples, read_dataset, split_eval

GOOD = {"prompt": "a dog on a couch", "story": "The dog slept. Then it woke. Then it slept again, happily."}
OTHER = {"prompt": "a cat on a bed", "story": "The cat claimed the bed and refused to move until spring."}


def error_for(path) -> str:
    with pytest.raises(DatasetError) as info:
        load_examples(path)
    return str(info.value)


def test_jsonl_and_array_load_the_same_examples(tmp_path):
    lines = write_jsonl(tmp_path / "set.jsonl", SMALL_SET)
    array = tmp_path / "set.json"
    array.write_text(json.dumps(SMALL_SET, indent=4))
    from_lines, from_array = load_examples(lines), load_examples(array)
    assert [(e.prompt, e.story) for e in from_lines] == [(r["prompt"], r["story"]) for r in SMALL_SET]
    assert [(e.prompt, e.story) for e in from_array] == [(e.prompt, e.story) for e in from_lines]
    assert from_lines[2].where == "line 3"
    assert from_array[1].where.startswith("item 2 (line ")


def test_blank_lines_bom_extra_keys_and_whitespace_are_accepted(tmp_path):
    path = tmp_path / "set.jsonl"
    row = dict(GOOD, source="handwritten", prompt="  a dog on a couch ")
    path.write_bytes(b"\xef\xbb\xbf" + (json.dumps(row) + "\n\n" + json.dumps(OTHER) + "\n\n").encode())
    examples = load_examples(path)
    assert [e.prompt for e in examples] == ["a dog on a couch", "a cat on a bed"]
    assert examples[1].where == "line 3"


def test_missing_file_and_folder(tmp_path):
    assert "no such file" in error_for(tmp_path / "nope.jsonl")
    assert "not a file" in error_for(tmp_path)


@pytest.mark.parametrize("content", ["", "   \n\n", "[]", "[ ]\n"])
def test_empty_files(tmp_path, content):
    path = tmp_path / "empty.json"
    path.write_text(content)
    message = error_for(path)
    assert "empty" in message or "no examples" in message


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + '{"prompt": "caf\xe9", "story": "x"}'.encode("latin-1"))
    assert "not UTF-8" in error_for(path)


def test_invalid_jsonl_names_the_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, OTHER, '{"prompt": "a boat", "story": "It sank."'])
    message = error_for(path)
    assert "line 3" in message and "invalid JSON" in message


def test_invalid_array_names_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"prompt": "a", "story": "b"},\n  {"prompt": "c", "story": "d",}\n]\n')
    message = error_for(path)
    assert "line 3" in message and "column" in message


def test_top_level_object_is_refused(tmp_path):
    path = tmp_path / "obj.json"
    path.write_text(json.dumps({"data": SMALL_SET}))
    # Starts with "{": read as JSON Lines of one row, which has no prompt field.
    assert "line 1" in error_for(path)


@pytest.mark.parametrize(
    "row, expected",
    [
        ('["a dog", "a story"]', "expected an object"),
        ('"just text"', "expected an object"),
        ("null", "expected an object"),
        ('{"story": "A story."}', "missing field 'prompt'"),
        ('{"prompt": "a dog"}', "missing field 'story'"),
        ('{"prompt": "", "story": "A story."}', "field 'prompt' is empty"),
        ('{"prompt": "a dog", "story": "  \\n "}', "field 'story' is empty"),
        ('{"prompt": 42, "story": "A story."}', "field 'prompt' must be a string, got int"),
        ('{"prompt": "a dog", "story": null}', "field 'story' must be a string, got NoneType"),
        ('{"prompt": "a dog", "story": ["A", "story"]}', "field 'story' must be a string, got list"),
    ],
)
def test_bad_rows_in_jsonl_name_the_line(tmp_path, row, expected):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, OTHER, row])
    message = error_for(path)
    assert "line 3" in message and expected in message, message


def test_bad_row_in_array_names_item_and_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([GOOD, OTHER, {"prompt": "a boat", "story": 7}], indent=2))
    message = error_for(path)
    assert "item 3 (line 10)" in message and "must be a string" in message, message


def test_exact_duplicates_are_dropped_and_named(tmp_path):
    # Same normalisation as the rest of the loader: surrounding whitespace does not make a row new.
    rows = [GOOD, OTHER, dict(GOOD, story=GOOD["story"] + " "), OTHER]
    dataset = read_dataset(write_jsonl(tmp_path / "dup.jsonl", rows))
    assert [(e.prompt, e.where) for e in dataset.examples] == [(GOOD["prompt"], "line 1"), (OTHER["prompt"], "line 2")]
    assert dataset.duplicates == [("line 3", "line 1"), ("line 4", "line 2")]
    message = dataset.duplicates_message("dup.jsonl")
    assert message == (
        "dup.jsonl: dropped 2 exact duplicates (same prompt and story): "
        "line 3 duplicates line 1; line 4 duplicates line 2"
    )
    assert load_examples(tmp_path / "dup.jsonl") == dataset.examples


def test_no_duplicates_no_message(tmp_path):
    dataset = read_dataset(write_jsonl(tmp_path / "set.jsonl", SMALL_SET))
    assert dataset.duplicates == [] and dataset.duplicates_message("set.jsonl") is None


def test_same_prompt_with_another_story_is_kept(tmp_path):
    # Not a conflict: one photo may honestly have many stories, and each one is worth learning.
    path = write_jsonl(tmp_path / "two.jsonl", [GOOD, dict(GOOD, story="Another story about the same photo.")])
    dataset = read_dataset(path)
    assert len(dataset.examples) == 2 and dataset.duplicates == []


def test_same_story_with_another_prompt_is_kept(tmp_path):
    path = write_jsonl(tmp_path / "two.jsonl", [GOOD, dict(GOOD, prompt="a puppy on a sofa")])
    assert len(load_examples(path)) == 2


def test_seed_like_array_keeps_its_39_distinct_rows(tmp_path):
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(seed_like_rows(), indent=2))
    dataset = read_dataset(path)
    assert len(dataset.examples) == 39 and len(dataset.duplicates) == 161
    assert dataset.examples[38].where == "item 39 (line 154)"
    assert dataset.duplicates[0] == ("item 40 (line 158)", "item 1 (line 2)")
    assert dataset.duplicates[-1] == ("item 200 (line 798)", "item 5 (line 18)")
    message = dataset.duplicates_message(path)
    assert message.startswith(
        f"{path}: dropped 161 exact duplicates (same prompt and story): item 40 (line 158) "
        "duplicates item 1 (line 2); item 41 (line 162) duplicates item 2 (line 6); "
    )
    assert message.endswith("; 158 more") and "\n" not in message


def test_a_file_of_one_row_repeated_keeps_one(tmp_path):
    path = tmp_path / "same.json"
    path.write_text(json.dumps([GOOD] * 5))
    dataset = read_dataset(path)
    assert len(dataset.examples) == 1 and len(dataset.duplicates) == 4


def test_sha256(tmp_path):
    path = write_jsonl(tmp_path / "set.jsonl", SMALL_SET)
    assert dataset_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_split_eval_is_deterministic_and_disjoint(tmp_path):
    examples = load_examples(write_jsonl(tmp_path / "set.jsonl", SMALL_SET))
    train, evals = split_eval(examples, 0.25, seed=3)
    assert (len(train), len(evals)) == (6, 2)
    assert not {e.where for e in train} & {e.where for e in evals}
    assert split_eval(examples, 0.25, seed=3) == (train, evals)
    assert split_eval(examples, 0.0, seed=3) == (examples, [])
    assert len(split_eval(examples[:1], 0.5)[0]) == 1  # never leaves training empty
    with pytest.raises(DatasetError):
        split_eval(examples, 1.0)
