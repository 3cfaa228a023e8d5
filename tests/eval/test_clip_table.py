"""``lorastory data clip-score``: the reference workflow's softmax table, plus cosines, as a csv."""

from __future__ import annotations

import csv
import json

import pytest
import torch


@pytest.fixture
def dataset(tmp_path, noise_images):
    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    rows = []
    texts = ["二次元", "a red circle", "a blue square", "二次元 girl", "a cat"]
    for index, (image, text) in enumerate(zip(noise_images(5), texts)):
        image.save(folder / "images" / f"{index}.png")
        rows.append({"text": text, "image": [f"images/{index}.png"]})
    rows.append({"text": "broken", "image": ["images/missing.png"]})
    (folder / "result.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return folder / "result.jsonl", texts


def _rows(path):
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_probabilities_are_the_reference_softmax_per_batch(cli, dataset, tiny_clip, plain_clip):
    path, texts = dataset
    result = cli("data", "clip-score", path, "--clip", tiny_clip, "--batch-size", "3")
    assert result.code == 0, result.err
    rows = _rows(path.with_name("result_clip_scores.csv"))
    assert [r["text"] for r in rows] == texts and [r["batch"] for r in rows] == ["0", "0", "0", "1", "1"]
    from PIL import Image

    images = [Image.open(path.parent / "images" / f"{i}.png").convert("RGB") for i in range(5)]
    for batch, members in ((0, range(0, 3)), (1, range(3, 5))):
        # The reference: model(**processor(text=..., images=...)).logits_per_image.softmax(dim=1)
        _, _, logits = plain_clip(tiny_clip, [images[i] for i in members], [texts[i] for i in members])
        probs = logits.softmax(dim=1)
        for local, index in enumerate(members):
            row = rows[index]
            got = [float(row[f"p_{j}"]) for j in range(len(members))]
            assert got == pytest.approx(probs[local].tolist(), abs=1e-5)
            assert float(row["prob"]) == pytest.approx(float(probs[local, local]), abs=1e-5)
            assert float(row["clip_t"]) == pytest.approx(float(logits[local, local]), abs=1e-3)
            assert float(row["cosine"]) == pytest.approx(float(logits[local, local]) / 100, abs=1e-5)
            assert int(row["best_match"]) == int(torch.argmax(probs[local]))
        assert sum(float(rows[members[0]][f"p_{j}"]) for j in range(len(members))) == pytest.approx(1, abs=1e-5)
    assert "missing.png" in result.err and "result_clip_scores.csv" in result.out
    assert "prob" in result.out and "CLIP-T" in result.out


def test_one_batch_and_csv_input(cli, dataset, tiny_clip, tmp_path):
    path, texts = dataset
    out = tmp_path / "scores.csv"
    assert cli("data", "clip-score", path, "--clip", tiny_clip, "--batch-size", "0", "--out", out).code == 0
    rows = _rows(out)
    assert {r["batch"] for r in rows} == {"0"} and all(r["p_4"] for r in rows)
    metadata = path.parent / "metadata.csv"
    metadata.write_text("file_name,text\n" + "".join(f"images/{i}.png,{t}\n" for i, t in enumerate(texts)), encoding="utf-8")
    assert cli("data", "clip-score", metadata, "--clip", tiny_clip).code == 0
    assert len(_rows(path.parent / "metadata_clip_scores.csv")) == 5


def test_bad_input(cli, tmp_path, tiny_clip):
    result = cli("data", "clip-score", tmp_path / "none.jsonl", "--clip", tiny_clip)
    assert result.code == 1 and "no such file" in result.err
    (tmp_path / "empty.jsonl").write_text('{"text": "x"}\n', encoding="utf-8")
    result = cli("data", "clip-score", tmp_path / "empty.jsonl", "--clip", tiny_clip)
    assert result.code == 1 and "no readable" in result.err
