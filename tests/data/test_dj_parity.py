"""Each parity case gives the rows, rewritten text and stats the real Data-Juicer 1.6.1 gave, locally and on Ray.

The expectations under dj_parity/expected/ were recorded from Data-Juicer by
scripts/dj_parity.py (its docstring describes the case format); a case whose
file or input changed since must be re-recorded, which the test says.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from lorastory.data.executor import run_recipe
from lorastory.data.recipe import load_recipe
from lorastory.errors import LorastoryError

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("dj_parity", ROOT / "scripts" / "dj_parity.py")
parity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(parity)

CASE_PATHS = sorted(parity.CASES.glob("*.yaml"))

# The operators of issue 19's text part: each needs at least one case.
TEXT_OPS = (
    "clean_html_mapper", "clean_links_mapper", "clean_email_mapper", "clean_ip_mapper", "clean_copyright_mapper",
    "fix_unicode_mapper", "punctuation_normalization_mapper", "whitespace_normalization_mapper",
    "chinese_convert_mapper", "remove_specific_chars_mapper", "remove_repeat_sentences_mapper",
    "remove_long_words_mapper", "remove_non_chinese_character_mapper", "remove_words_with_incorrect_substrings_mapper",
    "replace_content_mapper", "sentence_split_mapper", "remove_header_mapper", "remove_comments_mapper",
    "remove_bibliography_mapper", "remove_table_text_mapper", "alphanumeric_filter", "average_line_length_filter",
    "maximum_line_length_filter", "character_repetition_filter", "word_repetition_filter",
    "special_characters_filter", "suffix_filter", "specified_field_filter", "specified_numeric_field_filter",
    "general_field_filter", "token_num_filter", "stopwords_filter", "flagged_words_filter",
)

# Issue 19's model-backed image ops: their cases run tiny random models committed under
# cases/models/ (built by scripts/dj_parity_models.py), which Data-Juicer loads from the folder too.
MODEL_OPS = ("image_nsfw_filter", "image_watermark_filter", "image_text_matching_filter", "image_pair_similarity_filter")
# A model's float32 outputs move with the transformers release (5.24, against the one the Data-Juicer runs were
# recorded under, moved the ViT scores by up to 3e-7 and a BLIP ITM score of the noise picture by 2.4e-6): the
# tolerance of a case that runs one, still six digits.
MODEL_STATS_REL_TOL = 1e-5

# Ray runs the very same op chain as the local executor (executor_ray hands each actor a
# _Chain), so what the Ray run adds is building the ops inside actors: one case per kind of op
# (mappers, stats filters, field filters, ops that load a tokenizer, word lists or converters)
# runs there by default, every case with LORASTORY_RAY_PARITY=all (each Ray run costs seconds).
RAY_CASES = (
    "text_recipe", "chinese_convert_mapper_t2s", "sentence_split_mapper", "general_field_filter",
    "specified_numeric_field_filter", "token_num_filter", "stopwords_filter", "suffix_filter_other",
    "image_nsfw_filter_range",
)


def _expected(case: dict) -> dict:
    path = parity.EXPECTED / f"{case['name']}.json"
    assert path.exists(), f"no expectation for {case['name']}: run scripts/dj_parity.py {case['name']}"
    expected = json.loads(path.read_text(encoding="utf-8"))
    assert expected["source_sha256"] == case["source_sha256"], (
        f"{path.name} is stale (the case or its input changed): run scripts/dj_parity.py {case['name']}"
    )
    return expected


def _run(case: dict, folder: Path, runner: Any) -> tuple[list[dict], list[dict]] | str:
    """Kept rows and stats as the parity script normalises them, or the error that refused the case."""
    export = folder / "out" / "result.jsonl"
    recipe_path = folder / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(parity.recipe_for(case, export), allow_unicode=True), encoding="utf-8")
    try:
        runner(load_recipe(recipe_path))
    except LorastoryError as err:
        return str(err)
    image_key = (case.get("recipe") or {}).get("image_key", "images")
    return parity.normalise_rows(export, image_key)


def _differences(case: dict, expected: dict, got: tuple[list[dict], list[dict]] | str) -> list[str]:
    if expected["error"]:
        return [] if isinstance(got, str) else [f"Data-Juicer failed ({expected['error']}) but lorastory ran"]
    if isinstance(got, str):
        return [f"lorastory refused the case: {got}"]
    rows, stats = got
    problems = []
    if rows != expected["rows"]:
        want = [r.get("text") for r in expected["rows"]]
        have = [r.get("text") for r in rows]
        problems.append(f"kept rows differ:\n  Data-Juicer: {want}\n  lorastory:   {have}")
        for index, (a, b) in enumerate(zip(expected["rows"], rows)):
            if a != b:
                problems.append(f"  first differing row #{index}: Data-Juicer {a!r} lorastory {b!r}")
                break
        return problems
    ignored = set(case.get("ignore_stats") or [])
    runs_a_model = any(name in MODEL_OPS for entry in (case.get("process") or []) for name in entry)
    rel_tol = float(case.get("stats_rel_tol", MODEL_STATS_REL_TOL if runs_a_model else 1e-9))
    for index, (want, have) in enumerate(zip(expected["stats"], stats)):
        for key in set(want) | set(have):
            if key in ignored:
                continue
            if not _same(want.get(key), have.get(key), rel_tol):
                problems.append(f"row {index} ({rows[index].get('text')!r}): {key} {want.get(key)!r} != {have.get(key)!r}")
    return problems


def _same(a: Any, b: Any, rel_tol: float = 1e-9) -> bool:
    """Equal, floats within rounding (Data-Juicer stores float stats at about 10 digits; a case may allow
    more with ``stats_rel_tol``, e.g. float32 model outputs), lists element-wise."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y, rel_tol) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-12)
    return a == b


def test_every_text_op_has_a_parity_case():
    assert set(RAY_CASES) <= {path.stem for path in CASE_PATHS}
    used = {name for path in CASE_PATHS for entry in (parity.load_case(path).get("process") or []) for name in entry}
    assert sorted(set(TEXT_OPS) - used) == []


def test_every_model_backed_image_op_has_a_parity_case_with_a_local_model():
    cases = [parity.load_case(path) for path in CASE_PATHS]
    for op in MODEL_OPS:
        params = [entry[op] for case in cases for entry in (case.get("process") or []) if op in entry]
        assert params, f"no parity case runs {op}"
        folders = [value for p in params for key, value in p.items() if key.startswith("hf_")]
        assert folders and all(value.startswith("{cases}/models/") for value in folders), (op, folders)
        assert all((parity.CASES / value.removeprefix("{cases}/")).is_dir() for value in folders), (op, folders)


@pytest.mark.parametrize("case_path", CASE_PATHS, ids=[p.stem for p in CASE_PATHS])
def test_local_executor_matches_data_juicer(case_path, tmp_path):
    case = parity.load_case(case_path)
    expected = _expected(case)
    got = _run(case, tmp_path, lambda recipe: run_recipe(recipe, processes=1))
    problems = _differences(case, expected, got)
    assert not problems, f"{case['name']} ({case['title']}):\n" + "\n".join(problems)


@pytest.mark.slow
def test_ray_executor_matches_data_juicer(tmp_path, ray_local):
    """The RAY_CASES (every case with LORASTORY_RAY_PARITY=all) on one local Ray, 2 actors."""
    from lorastory.data.executor_ray import run_recipe_ray

    problems = []
    every = os.environ.get("LORASTORY_RAY_PARITY") == "all"
    for case_path in CASE_PATHS:
        if not every and case_path.stem not in RAY_CASES:
            continue
        case = parity.load_case(case_path)
        folder = tmp_path / case["name"]
        folder.mkdir()
        got = _run(case, folder, lambda recipe: run_recipe_ray(recipe, processes=2))
        problems += [f"{case['name']}: {p}" for p in _differences(case, _expected(case), got)]
    assert not problems, "\n".join(problems)
