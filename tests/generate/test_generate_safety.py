"""``generate`` and ``regenerate`` never destroy a user's files, refuse bad numbers before a model
loads, and treat run folders written by someone else as input to check (one line, exit 1)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from lorastory.errors import ConfigError, DataError, OutputError
from lorastory.generate.story import generate_story, manifest_panels
from lorastory.generate.story_file import load_story

STORY = """\
# my story: this comment must survive
title: t
defaults:
  steps: 2
  cfg: 4
  width: 64
  height: 64
  seed: 3
panels:
  - prompt: a cat
  - prompt: a dog
"""
THREE = STORY + "  - prompt: a bird\n"


def _write(folder: Path, text: str = STORY, name: str = "story.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def model(tiny_model_path) -> str:
    return str(tiny_model_path("kolors"))


@pytest.fixture(scope="module")
def kolors_pipe(tiny_model_path):
    from lorastory.models.registry import load_pipeline

    return load_pipeline(tiny_model_path("kolors"))


@pytest.fixture
def run(tmp_path, model, kolors_pipe) -> Path:
    """A finished two-panel run folder."""
    folder = tmp_path / "run"
    generate_story(load_story(_write(tmp_path / "src")), model, folder, pipe=kolors_pipe)
    return folder


# --------------------------------------------------------------------------- 1. generate --out


def test_out_holding_the_story_file_is_refused_and_nothing_changes(tmp_path, cli, model):
    story = _write(tmp_path / "mine")
    (tmp_path / "mine" / "panel-01.png").write_bytes(b"my own picture")
    (tmp_path / "mine" / "manifest.json").write_text("{\"mine\": true}", encoding="utf-8")
    before = _snapshot(tmp_path / "mine")
    for extra in ([], ["--overwrite"]):
        result = cli("generate", story, "--model", model, "--out", tmp_path / "mine", *extra)
        result.error_line("contains the input story file")
    assert _snapshot(tmp_path / "mine") == before  # comments and all


def test_out_reaching_an_input_by_a_link_or_inside_the_model_is_refused(tmp_path, cli, model):
    story = _write(tmp_path / "s")
    os.symlink(tmp_path / "s", tmp_path / "link")
    cli("generate", story, "--model", model, "--out", tmp_path / "link").error_line("story file")
    cli("generate", story, "--model", model, "--out", Path(model) / "run").error_line("lies inside the input --model")
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"not really a lora")
    cli("generate", story, "--model", model, "--lora", lora, "--out", lora).error_line("--lora")
    assert lora.read_bytes() == b"not really a lora"
    assert story.read_text(encoding="utf-8") == STORY


def test_non_empty_out_that_is_not_a_run_is_refused_even_with_overwrite(tmp_path, cli, model):
    story = _write(tmp_path / "s")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "panel-01.png").write_bytes(b"holiday photo")
    cli("generate", story, "--model", model, "--out", tmp_path / "out").error_line("not empty", "choose a new --out")
    cli("generate", story, "--model", model, "--out", tmp_path / "out", "--overwrite").error_line("no manifest.json")
    assert _snapshot(tmp_path / "out") == {"panel-01.png": b"holiday photo"}


def test_existing_file_or_unwritable_place_as_out_is_one_line(tmp_path, cli, model):
    story = _write(tmp_path / "s")
    (tmp_path / "file").write_bytes(b"x")
    cli("generate", story, "--model", model, "--out", tmp_path / "file").error_line("is not a folder")
    assert (tmp_path / "file").read_bytes() == b"x"
    result = cli("generate", story, "--model", model, "--out", "/proc/self/lorastory-run")
    result.error_line("/proc/self")


def test_earlier_run_needs_overwrite_which_replaces_only_its_own_files(tmp_path, cli, model):
    story = _write(tmp_path / "s", THREE)
    out = tmp_path / "out"
    assert cli("generate", story, "--model", model, "--out", out).code == 0
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    before = _snapshot(out)
    cli("generate", story, "--model", model, "--out", out).error_line("not empty", "--overwrite")
    assert _snapshot(out) == before
    shorter = _write(tmp_path / "s", STORY, "short.yaml")
    result = cli("generate", shorter, "--model", model, "--out", out, "--overwrite")
    assert result.code == 0, result.err
    assert not (out / "panel-03.png").exists()  # the stale panel of the longer run is gone
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert [p.file for p in manifest_panels(out / "manifest.json")] == ["panel-01.png", "panel-02.png"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging or journal left


def test_overwrite_never_replaces_a_file_the_earlier_run_did_not_write(tmp_path, cli, model):
    out = tmp_path / "out"
    assert cli("generate", _write(tmp_path / "s"), "--model", model, "--out", out).code == 0
    (out / "panel-03.png").write_bytes(b"my drawing")
    longer = _write(tmp_path / "s", THREE, "long.yaml")
    cli("generate", longer, "--model", model, "--out", out, "--overwrite").error_line("panel-03.png is not a file of the earlier run")
    assert (out / "panel-03.png").read_bytes() == b"my drawing"


def test_a_failed_render_leaves_the_earlier_run_and_no_staging(run, model, kolors_pipe, monkeypatch):
    import lorastory.generate.render as render_module

    before = _snapshot(run)

    def boom(*args, **kwargs):
        raise RuntimeError("the GPU fell off")

    monkeypatch.setattr(render_module, "render_batch", boom)
    with pytest.raises(RuntimeError):
        generate_story(load_story(run / "story.yaml"), model, run, pipe=kolors_pipe, overwrite=True)
    assert _snapshot(run) == before
    with pytest.raises(RuntimeError):
        generate_story(load_story(run / "story.yaml"), model, run.parent / "new", pipe=kolors_pipe)
    assert not (run.parent / "new").exists()
    assert not [p for p in run.parent.iterdir() if p.name.startswith(".")]


def test_a_panel_write_failing_on_a_writer_thread_fails_the_run_and_leaves_nothing(tmp_path, model, kolors_pipe,
                                                                                  monkeypatch):
    import lorastory.generate.render as render_module

    real = render_module.save_png_with_info

    def disk_full(image, path, info):
        if Path(path).name == "panel-01.png":
            raise OSError(28, "No space left on device")
        real(image, path, info)

    monkeypatch.setattr(render_module, "save_png_with_info", disk_full)
    story = load_story(_write(tmp_path / "src"))
    with pytest.raises(OSError, match="No space left"):  # panel 2 renders while panel 1 is being written
        generate_story(story, model, tmp_path / "out", pipe=kolors_pipe, batch_size=1)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder, no temporary


def test_a_journal_left_by_a_kill_is_completed_by_the_next_run(run, model, kolors_pipe):
    from lorastory.fileio import atomic_write_json

    pending = run / ".manifest.json.123.abc.tmp"
    pending.write_text(json.dumps({**json.loads((run / "manifest.json").read_text()), "title": "new"}))
    atomic_write_json(run / ".manifest.json.commit", [[str(pending), str(run / "manifest.json")]])
    generate_story(load_story(run / "story.yaml"), model, run, pipe=kolors_pipe, overwrite=True)
    assert not (run / ".manifest.json.commit").exists() and not pending.exists()


# --------------------------------------------------------------------------- 3/4. regenerate


@pytest.mark.parametrize("seed", ["-5", str(2**64), "99999999999999999999999999"])
def test_regenerate_refuses_seeds_out_of_range_and_changes_nothing(run, cli, seed):
    before = _snapshot(run)
    cli("regenerate", run, "--panel", "1", "--seed", seed).error_line("out of range", str(2**64 - 1))
    assert _snapshot(run) == before


def test_regenerate_accepts_the_largest_seed(run, cli):
    assert cli("regenerate", run, "--panel", "2", "--seed", str(2**64 - 1)).code == 0
    assert load_story(run / "story.yaml").panels[1].seed == 2**64 - 1


def _edit_manifest(run: Path, change) -> None:
    data = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    change(data)
    (run / "manifest.json").write_text(json.dumps(data), encoding="utf-8")


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda run: (run / "manifest.json").unlink(), "manifest.json: no such file"),
        (lambda run: (run / "manifest.json").write_text("{not json", encoding="utf-8"), "invalid JSON"),
        (lambda run: (run / "manifest.json").write_text("[" * 100_000, encoding="utf-8"), "manifest.json"),
        (lambda run: (run / "manifest.json").write_bytes(b"\xff\xfe{}"), "not UTF-8"),
        (lambda run: (run / "manifest.json").write_text("[1, 2]", encoding="utf-8"), "expected a JSON object"),
        (lambda run: _edit_manifest(run, lambda d: d.update(panels="x")), "'panels' must be a non-empty list"),
        (lambda run: _edit_manifest(run, lambda d: d["panels"].pop()), "lists 1 panels but story.yaml has 2"),
        (lambda run: _edit_manifest(run, lambda d: d["panels"][0].update(seed="a")), "panel 1: 'seed'"),
        (lambda run: _edit_manifest(run, lambda d: d["panels"][1].update(file="../../etc/passwd")), "panel 2: 'file'"),
        (lambda run: _edit_manifest(run, lambda d: d["panels"].__setitem__(1, 7)),
         "panel 2 must be an object"),
        (lambda run: _edit_manifest(run, lambda d: d.update(lora={"path": "x", "scale": "big"})), "'lora'"),
        (lambda run: (run / "panel-02.png").unlink(), "panel-02.png: panel 2"),
        (lambda run: (run / "story.yaml").write_text("panels: 3\n", encoding="utf-8"), "story.yaml: line 1: panels"),
        (lambda run: (run / "story.yaml").write_text("panels:\n  - prompt: a\n    seed: -5\n", encoding="utf-8"),
         "story.yaml: line 3: panels.0.seed"),
    ],
)
def test_regenerate_checks_the_run_folder_before_rendering(run, cli, damage, needle):
    damage(run)
    before = _snapshot(run)
    cli("regenerate", run, "--panel", "1", "--seed", "5").error_line(needle)
    assert _snapshot(run) == before


def test_regenerate_with_a_fifo_manifest_or_a_missing_folder_does_not_hang(run, cli, tmp_path):
    (run / "manifest.json").unlink()
    os.mkfifo(run / "manifest.json")
    cli("regenerate", run, "--panel", "1", "--seed", "5").error_line("not a regular file")
    cli("regenerate", tmp_path / "nowhere", "--panel", "1", "--seed", "5").error_line("no such run folder")


def test_regenerate_is_all_or_nothing(run, kolors_pipe, monkeypatch):
    from lorastory.generate import regenerate as regenerate_module

    before = _snapshot(run)

    def cancel() -> None:
        raise ConfigError("cancelled")

    with pytest.raises(ConfigError, match="cancelled"):
        regenerate_module.regenerate_panel(run, 1, 99, pipe=kolors_pipe, before_swap=cancel)
    assert _snapshot(run) == before
    import lorastory.generate.grid as grid_module

    monkeypatch.setattr(grid_module, "make_storyboard", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space")))
    with pytest.raises(OSError):
        regenerate_module.regenerate_panel(run, 1, 99, pipe=kolors_pipe)
    assert _snapshot(run) == before
    assert not [p for p in run.iterdir() if p.name.startswith(".")]


def test_manifest_panels_names_the_file_for_every_kind_of_damage(tmp_path):
    path = tmp_path / "manifest.json"
    for text, needle in [("", "invalid JSON"), ("{\"panels\": [{\"file\": 3, \"prompt\": \"a\"}]}", "'file'"),
                         ("{\"panels\": [{\"file\": \"a.png\"}]}", "no 'prompt'"),
                         ("{\"panels\": [{\"file\": \"a.png\", \"prompt\": \"a\", \"cfg\": 1e999}]}", "'cfg'")]:
        path.write_text(text, encoding="utf-8")
        with pytest.raises(DataError, match=needle) as caught:
            manifest_panels(path)
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_manifest_never_holds_nan(tmp_path):
    from lorastory.generate.rundir import write_json

    with pytest.raises(ValueError):
        write_json(tmp_path / "m.json", {"x": float("nan")})
    assert not (tmp_path / "m.json").exists()


# --------------------------------------------------------------------------- 5/7. numbers and story files


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (("  cfg: 4\n", "  cfg: .inf\n"), "line 5: defaults.cfg"),
        (("  cfg: 4\n", "  cfg: .nan\n"), "defaults.cfg"),
        (("  cfg: 4\n", "  cfg: 1e30\n"), "defaults.cfg"),
        (("  steps: 2\n", "  steps: 0\n"), "defaults.steps"),
        (("  steps: 2\n", "  steps: 100000\n"), "defaults.steps"),
        (("  seed: 3\n", f"  seed: {2**64}\n"), "defaults.seed"),
        (("  seed: 3\n", "  seed: -1\n"), "defaults.seed"),
        (("  seed: 3\n", f"  seed: {2**64 - 1}\n"), "passes the largest seed"),
        (("  width: 64\n", "  width: 0\n"), "defaults.width"),
        (("  width: 64\n", "  width: -8\n"), "defaults.width"),
        (("  width: 64\n", "  width: 60\n"), "multiple of 8"),
        (("  width: 64\n", "  width: 100000\n"), "defaults.width"),
        (("  width: 64\n  height: 64\n", "  width: 8192\n  height: 8192\n"), "4096x4096"),
        (("  - prompt: a cat\n", "  - prompt: 12\n"), "line 10: panels.0.prompt"),
        (("  - prompt: a cat\n", "  - prompt: \"\\ud800 cat\"\n"), "line 10: panels.0.prompt"),
        (("title: t\n", "title: \"\\udcff\"\n"), "line 2: title"),
        (("  - prompt: a cat\n", "  - prompt: a\n    cfg: .inf\n"), "panels.0.cfg"),
        (("panels:\n  - prompt: a cat\n  - prompt: a dog\n", "panels: a cat\n"), "line 9: panels"),
        (("title: t\n", "title: [unclosed\n"), "invalid YAML"),
    ],
)
def test_bad_numbers_and_text_in_a_story_stop_before_the_model_loads(tmp_path, cli, edit, needle):
    story = _write(tmp_path, STORY.replace(*edit))
    result = cli("generate", story, "--model", tmp_path / "no-model-here", "--out", tmp_path / "out")
    result.error_line(str(story), needle)
    assert not (tmp_path / "out").exists()


def test_billion_laughs_and_non_utf8_stories_are_one_line(tmp_path, cli):
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(9)
    ) + "panels:\n  - prompt: *j\n"
    for name, data, needle in [("laughs.yaml", laughs.encode(), "aliases"),
                               ("latin1.yaml", "title: caf\xe9\npanels:\n  - prompt: a\n".encode("latin-1"), "not UTF-8"),
                               ("list.yaml", b"- a\n- b\n", "expected a mapping")]:
        (tmp_path / name).write_bytes(data)
        cli("generate", tmp_path / name, "--model", "x", "--out", tmp_path / "out").error_line(name, needle)
    os.mkfifo(tmp_path / "fifo.yaml")
    cli("generate", tmp_path / "fifo.yaml", "--model", "x", "--out", tmp_path / "out").error_line("not a regular file")


@pytest.mark.parametrize("scale", ["nan", "inf", "-inf", "1e30", "-101"])
def test_lora_scale_must_be_finite_and_sane(tmp_path, cli, model, scale):
    lora = tmp_path / "l.safetensors"
    lora.write_bytes(b"12345678")
    result = cli("generate", _write(tmp_path), "--model", model, "--lora", lora, "--lora-scale", scale,
                 "--out", tmp_path / "out")
    result.error_line("--lora-scale", "out of range", "100")
    assert not (tmp_path / "out").exists()


def test_batch_size_below_one_is_refused(tmp_path, cli, model):
    cli("generate", _write(tmp_path), "--model", model, "--batch-size", "-1", "--out", tmp_path / "o").error_line("--batch-size")


def test_a_panel_larger_than_free_memory_is_refused_naming_the_limit(tmp_path, model, kolors_pipe, monkeypatch):
    import lorastory.generate.checks as checks

    monkeypatch.setattr(checks, "available_memory", lambda device: 2 * 10**9)
    story = load_story(_write(tmp_path, STORY.replace("width: 64\n  height: 64", "width: 2048\n  height: 2048")))
    with pytest.raises(ConfigError, match=r"2048x2048 panel needs about .* GB .* use at most [\d,]+ pixels per panel"):
        generate_story(story, model, tmp_path / "out", pipe=kolors_pipe)
    assert not (tmp_path / "out").exists()


def test_a_reference_image_that_is_not_a_picture_is_one_line(tmp_path, cli, model):
    os.mkfifo(tmp_path / "ref.png")
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    for name, needle in [("ref.png", "not a regular file"), ("dir.png", "not a regular file"),
                         ("cut.png", "cut.png"), ("missing.png", "no such file")]:
        text = STORY.replace("panels:", f"consistency:\n  mode: reference\n  reference_image: {tmp_path / name}\npanels:")
        story = _write(tmp_path / "s", text)
        cli("generate", story, "--model", model, "--out", tmp_path / "out").error_line("consistency.reference_image", needle)
    assert not (tmp_path / "out").exists()


def test_out_inside_the_reference_image_folder_is_fine_but_the_image_itself_is_not(tmp_path, cli, model):
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 10, 10)).save(tmp_path / "ref.png")
    text = STORY.replace("panels:", f"consistency:\n  mode: reference\n  reference_image: {tmp_path / 'ref.png'}\npanels:")
    story = _write(tmp_path / "s", text)
    cli("generate", story, "--model", model, "--out", tmp_path / "ref.png").error_line("reference_image")
    shutil.copy(tmp_path / "ref.png", tmp_path / "copy.png")
    assert (tmp_path / "ref.png").read_bytes() == (tmp_path / "copy.png").read_bytes()


def test_the_library_refuses_an_earlier_run_unless_told_to_overwrite(run, model, kolors_pipe):
    before = _snapshot(run)
    with pytest.raises(OutputError, match="pass --overwrite"):
        generate_story(load_story(run / "story.yaml"), model, run, pipe=kolors_pipe)
    assert _snapshot(run) == before


def test_an_empty_out_folder_is_used_and_a_killed_runs_staging_is_cleaned(tmp_path, model, kolors_pipe):
    story = load_story(_write(tmp_path / "s"))
    (tmp_path / "out").mkdir()
    generate_story(story, model, tmp_path / "out", pipe=kolors_pipe)
    assert (tmp_path / "out" / "manifest.json").is_file()
    stale = tmp_path / "out" / ".lorastory-run.999999999.dead.tmp"  # what a kill -9 mid-render leaves
    stale.mkdir()
    (stale / "panel-01.png").write_bytes(b"half")
    beside = tmp_path / ".new.999999999.dead.tmp"
    beside.mkdir()
    generate_story(story, model, tmp_path / "out", pipe=kolors_pipe, overwrite=True)
    generate_story(story, model, tmp_path / "new", pipe=kolors_pipe)
    assert not stale.exists() and not beside.exists()
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == [
        "manifest.json", "panel-01.png", "panel-02.png", "story.yaml", "storyboard.png"]
