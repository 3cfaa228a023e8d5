"""PNG Info: the generation parameters stored in a PNG (ours, or A1111's ``parameters`` text), read
with :func:`lorastory.generate.pngmeta.read_parameters`, as text, a table, and the Story tab's fields."""

from __future__ import annotations

from typing import Any

from lorastory.errors import DataError
from lorastory.generate.guidance import GUIDANCE_KEY, TRUE_CFG_KEY
from lorastory.generate.pngmeta import format_parameters, read_parameters
from lorastory.ui.workspace import Workspace

FIELD_COLUMNS = ["parameter", "value"]


def png_info(ws: Workspace, path: str) -> dict[str, Any]:
    """What ``path`` (an upload, inside the workspace) was made with: infotext, table rows and the params."""
    file = ws.check(path)
    params = read_parameters(file)
    if params is None:
        raise DataError(f"{file.name}: no generation parameters in this PNG (neither lorastory's nor A1111's)")
    rows = [[key, str(value)] for key, value in params.to_dict().items() if value not in (None, "", {})]
    rows += [[f"extra: {key}", value] for key, value in params.extra.items()]
    return {"params": params, "text": format_parameters(params), "rows": [r for r in rows if r[0] != "extra"]}


def story_fields(params: Any) -> dict[str, Any]:
    """The Story tab's fields for one panel made with ``params`` (empty where the PNG says nothing).

    ``true_cfg`` is the PNG's ``True CFG scale`` (a guidance-distilled model's panel), ``0`` where it says the
    guidance was distilled alone (the field is then cleared), ``None`` where it says nothing of guidance.
    """
    return {"title": "", "character": "", "style": "", "negative": params.negative_prompt or "",
            "steps": params.steps, "cfg": params.cfg_scale, "width": params.width, "height": params.height,
            "seed": params.seed, "sampler": params.sampler,
            "panels": [[params.prompt, "", "" if params.seed is None else params.seed, ""]],
            "true_cfg": _true_cfg(params.extra)}


def _true_cfg(extra: dict[str, str]) -> float | None:
    try:
        return float(extra[TRUE_CFG_KEY])
    except (KeyError, ValueError):
        return 0.0 if GUIDANCE_KEY in extra else None
