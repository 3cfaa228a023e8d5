"""What the tab builders share: the app's context, the poll clock, and how results are worded.

No Gradio import here: :mod:`lorastory.ui.app` uses :class:`AppContext` before Gradio may be loaded.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lorastory.errors import LorastoryError
from lorastory.ui.jobs import RUNNING, JobQueue
from lorastory.ui.wording import ui_words
from lorastory.ui.workspace import Workspace


@dataclass
class AppContext:
    """What every handler shares: the workspace, the job queue and where uploads land."""

    ws: Workspace
    jobs: JobQueue
    upload_root: str = ""


@dataclass
class Clock:
    """Runs a tab's poll every tick of the app's one timer and on each page load, so the
    progress of a background job shows again after a reload."""

    demo: Any
    timer: Any

    def poll(self, fn: Callable[..., Any], inputs: Any, outputs: list[Any]) -> None:
        self.timer.tick(fn, inputs, outputs, show_progress="hidden")
        self.demo.load(fn, inputs, outputs, show_progress="hidden")


class Tab:
    """One tab of the app: its components, built in the order they appear (:meth:`build`), and its handlers."""

    label = ""
    tab_id = ""

    def __init__(self, ctx: AppContext) -> None:
        import gradio as gr

        self.ctx = ctx
        self.ws = ctx.ws
        with gr.Tab(self.label, id=self.tab_id) as self.tab:
            self.build()

    def build(self) -> None:
        raise NotImplementedError


def ok(text: str) -> str:
    return f"**Done:** {text}"


def err(error: Exception) -> str:
    if isinstance(error, LorastoryError):
        return f"**Error:** {ui_words(str(error))}"
    return f"**Error:** {ui_words(f'{type(error).__name__}: {error}')}"


def md_list(items: list[dict[str, str]], limit: int = 20) -> str:
    lines = [f"- `{html.escape(i.get('item') or i.get('file', ''))}`: {html.escape(ui_words(i['reason']))}"
             for i in items[:limit]]
    if len(items) > limit:
        lines.append(f"- ... and {len(items) - limit} more")
    return "\n".join(lines)


def progress_md(job: Any) -> str:
    # Plain words, not emoji: a machine without an emoji font shows those as boxes.
    icon = {"running": "**Running:**", "queued": "**Queued:**", "done": "**Done:**", "failed": "**Failed:**",
            "cancelled": "**Cancelled:**"}.get(job.status, "")
    bar = ""
    if job.status == RUNNING:
        width = int(job.progress * 100)
        bar = (f'\n\n<div style="background:#e5e7eb;border-radius:4px;height:10px;width:100%">'
               f'<div style="background:#6366f1;height:10px;border-radius:4px;width:{width}%"></div></div>')
    return f"{icon} {html.escape(ui_words(job.summary()))}{bar}"


def stop_latest(ctx: AppContext, kind: str) -> Callable[[], str]:
    """A handler that cancels the newest job of ``kind`` (the Stop buttons)."""
    def stop() -> str:
        job = ctx.jobs.latest(kind)
        if job is None or not job.active:
            return "nothing running"
        ctx.jobs.cancel(job.id)
        return f"**Stopping:** {ctx.jobs.get(job.id).summary()}"
    return stop


def rows(value: Any) -> list[list[Any]]:
    """Dataframe value (pandas, list or dict) as a list of rows."""
    if value is None:
        return []
    if hasattr(value, "values") and hasattr(value, "columns"):
        return [list(r) for r in value.astype(object).where(value.notna(), None).values.tolist()]
    if isinstance(value, dict):
        return [list(r) for r in value.get("data", [])]
    return [list(r) for r in value]


def yaml_text(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False, default_flow_style=False)


def set_initial(component: Any, value: Any) -> None:
    """Set a built component's value as its constructor would (before the app is served)."""
    shown = component.postprocess(value)
    component.value = shown.model_dump() if hasattr(shown, "model_dump") else shown
