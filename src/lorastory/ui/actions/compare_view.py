"""The LoRA on/off result of a scored story run as the page shows it: the two-row picture
(``RUN/compare/lora_on_off.png``: LoRA on above, off below) and a table of the deltas from
``RUN/compare/compare.json`` (what ``lorastory eval --compare`` writes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorastory.errors import LorastoryError
from lorastory.eval.compare import COMPARE_DIR, IMAGE_FILE, RESULT_FILE, SUMMARY_KEYS
from lorastory.fileio import parse_json
from lorastory.generate.story import lora_tag_name
from lorastory.ui.workspace import Workspace

# What each summary score is called on the page (the style and content scores first: what a LoRA is for).
LABELS = {
    "style_score_mean": "style score (toward the training pictures)",
    "clip_t_content_mean": "story content (CLIP-T without the style phrase)",
    "clip_t_mean": "CLIP-T (the whole prompt)",
    "consistency": "character consistency",
    "subject_consistency": "subject consistency",
    "aesthetic_mean": "aesthetic score",
}
COLUMNS = ["score", "LoRA on", "LoRA off", "delta"]


def _number(value: Any, signed: bool = False) -> str:
    if not isinstance(value, (int, float)):
        return "n/a"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def on_off_rows(summary: dict[str, Any]) -> list[list[str]]:
    """[score, on, off, delta] per summary score that has a value, the style and content scores first."""
    order = [k for k in LABELS if k in SUMMARY_KEYS] + [k for k in SUMMARY_KEYS if k not in LABELS]
    rows = []
    for key in order:
        entry = summary.get(key) or {}
        if entry.get("with_lora") is None and entry.get("without_lora") is None:
            continue
        rows.append([LABELS.get(key, key), _number(entry.get("with_lora")), _number(entry.get("without_lora")),
                     _number(entry.get("delta"), signed=True)])
    return rows


def on_off_view(ws: Workspace, run: str | Path | None) -> dict[str, Any] | None:
    """The run's LoRA on/off comparison (image, rows, a one-line headline), or None when it has none."""
    if not run:
        return None
    try:
        folder = ws.resolve(str(run), must_exist=True) / COMPARE_DIR
        result_file = folder / RESULT_FILE
        if not result_file.is_file():
            return None
        result = parse_json(result_file.read_bytes(), str(result_file))
    except (LorastoryError, OSError):
        return None
    if not isinstance(result, dict):
        return None
    image = folder / IMAGE_FILE
    summary = result.get("summary") if isinstance(result.get("summary"), dict) else {}
    lora = result.get("lora") if isinstance(result.get("lora"), dict) else {}
    style = (summary.get("style_score_mean") or {}).get("delta")
    content = (summary.get("clip_t_content_mean") or {}).get("delta")
    # The LoRA by its run's name (runs/NAME/lora.safetensors: NAME), as the PNG parameters name it, not "lora".
    shown = lora_tag_name(Path(str(lora["path"]))) if lora.get("path") else "?"
    headline = (f"LoRA `{shown}` at scale {lora.get('scale', '?')}: "
                f"style {_number(style, True)}, content {_number(content, True)} (LoRA on minus off)")
    return {"image": str(image) if image.is_file() and ws.is_inside(image) else None, "rows": on_off_rows(summary),
            "headline": headline}
