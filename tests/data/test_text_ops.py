"""The text ops' behaviour outside what the Data-Juicer parity cases record: offline refusals, shipped lists, Mapper chains.

Parity with Data-Juicer itself is tests/data/test_dj_parity.py; here are the
cases Data-Juicer cannot be compared on (it would download something, or run
code from the recipe) and what a user sees then: one error line.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

RECIPE = """\
dataset_path: '{dataset}'
export_path: '{export}'
np: 1
process:
{process}
"""


def _recipe(tmp_path: Path, process: str, rows: list[dict] | None = None) -> Path:
    dataset = tmp_path / "data.jsonl"
    rows = rows or [{"text": "The cat is on the mat and the dog is in the house."}, {"text": "damn damn damn"}]
    dataset.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(dataset=dataset, export=tmp_path / "out" / "result.jsonl", process=process), encoding="utf-8")
    return path


def _kept(tmp_path: Path) -> list[str]:
    lines = (tmp_path / "out" / "result.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines]


@pytest.mark.parametrize(
    ("process", "needles"),
    [
        ("  - word_repetition_filter: {tokenization: true}", ("word_repetition_filter", "sp_model_path")),
        ("  - stopwords_filter: {tokenization: true}", ("stopwords_filter", "sentencepiece")),
        ("  - remove_words_with_incorrect_substrings_mapper: {tokenization: true}", ("tokenization", "set it to false")),
        ("  - alphanumeric_filter: {tokenization: true}", ("hf_tokenizer", "local tokenizer folder")),
        ("  - remove_repeat_sentences_mapper: {tokenizer: 'lambda s: s.split()'}", ("tokenizer", "Python code")),
        ("  - clean_links_mapper: {pattern: '(unclosed'}", ("pattern", "regular expression")),
        ("  - replace_content_mapper: {pattern: [a, b], repl: [x]}", ("repl has 1 items but pattern has 2",)),
        ("  - general_field_filter: {filter_condition: \"__import__('os').system('x')\"}", ("unsupported Call",)),
        ("  - fix_unicode_mapper: {normalization: NFX}", ("NFX",)),
        ("  - chinese_convert_mapper: {mode: s2x}", ("mode",)),
        ("  - stopwords_filter: {stopwords_dir: '/nonexistent/words'}", ("stopwords_dir", "no such folder")),
        ("  - flagged_words_filter: {lang: xx}", ("no flagged_words for lang 'xx'", "en")),
    ],
)
def test_recipes_data_juicer_would_download_or_eval_are_refused_in_one_line(cli, tmp_path, process, needles):
    result = cli("data", "run", _recipe(tmp_path, process), "-q")
    result.error_line(*needles)
    assert not (tmp_path / "out" / "result.jsonl").exists()


def test_token_num_filter_with_a_hub_id_offline_stops_the_run_in_one_line(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: the id cannot be found locally
    result = cli("data", "run", _recipe(tmp_path, "  - token_num_filter: {min_num: 1}"), "-q")
    result.error_line("token_num_filter", "EleutherAI/pythia-6.9b-deduped", "local tokenizer folder")
    assert not (tmp_path / "out" / "result.jsonl").exists()


def test_shipped_word_lists_are_used_without_a_folder(cli, tmp_path):
    process = "  - stopwords_filter: {min_ratio: 0.3}\n  - flagged_words_filter: {max_ratio: 0.5}"
    assert cli("data", "run", _recipe(tmp_path, process), "-q").code == 0
    assert _kept(tmp_path) == ["The cat is on the mat and the dog is in the house."]
    stats = [json.loads(line)["__dj__stats__"] for line in (tmp_path / "out" / "result_stats.jsonl").open()]
    assert stats[0]["flagged_words_ratio"] == 0.0 and stats[0]["stopwords_ratio"] > 0.3


def test_mappers_rewrite_for_the_filters_after_them(cli, tmp_path):
    rows = [{"text": "see https://example.com/a/very/long/link ok"}, {"text": "short https://x.io/a/b/c/d/e/f/g"}]
    process = "  - clean_links_mapper:\n  - whitespace_normalization_mapper:\n  - text_length_filter: {min_len: 7}"
    assert cli("data", "run", _recipe(tmp_path, process, rows), "-q").code == 0
    assert _kept(tmp_path) == ["see  ok"]
    report = json.loads((tmp_path / "out" / "result_report.json").read_text(encoding="utf-8"))
    assert "clean_links_mapper" in json.dumps(report)


def test_sentence_split_uses_punkt_rules_offline(cli, tmp_path):
    rows = [{"text": "The fox runs. It jumps! Does it stop? No."}]
    assert cli("data", "run", _recipe(tmp_path, "  - sentence_split_mapper: {lang: en}", rows), "-q").code == 0
    assert _kept(tmp_path) == ["The fox runs.\nIt jumps!\nDoes it stop?\nNo."]
