"""What the tab builders share: the app's context, the poll clock, and how results are worded.

No Gradio import here: :mod:`lorastory.ui.app` uses :class:`AppContext` before Gradio may be loaded.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lorastory.errors import LorastoryError
from lorastory.ui.jobs import RUNNING, JobQueue
from lorastory.ui.wording import ui_words
from lorastory.ui.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass
class AppContext:
    """What every handler shares: the workspace, the job queue and where uploads land."""

    ws: Workspace
    jobs: JobQueue
    upload_root: str = ""


@dataclass
class Clock:
    """The page's one timer. Every tab's poll is registered here (:meth:`poll`) and :meth:`start` wires
    them as few events as their outputs allow: one event per tick and one on each page load, not one per
    tab. Each event is a round trip through Gradio's queue, so nine pollers at 1 Hz kept a small machine
    busy and made every button wait its turn behind them. A poll whose outputs overlap an earlier group's
    gets a group of its own, so no component is written twice in one event."""

    demo: Any
    timer: Any
    polls: list[tuple[Callable[..., Any], list[Any], list[Any], bool]] = field(default_factory=list)

    def poll(self, fn: Callable[..., Any], inputs: Any, outputs: list[Any], on_load: bool = True) -> None:
        """Run ``fn(*inputs) -> outputs`` on each tick (and on each page load unless ``on_load`` is false)."""
        listed = list(inputs) if isinstance(inputs, (list, tuple)) else [] if inputs is None else [inputs]
        self.polls.append((fn, listed, list(outputs), on_load))

    def start(self) -> None:
        """Wire the registered polls (call once, after every tab is built)."""
        for group in _disjoint_groups(self.polls):
            inputs = [c for _, ins, _, _ in group for c in ins]
            outputs = [c for _, _, outs, _ in group for c in outs]
            self.timer.tick(_run_polls(group), inputs, outputs, show_progress="hidden", api_visibility="undocumented")
            loading = [entry for entry in group if entry[3]]
            if loading:
                self.demo.load(_run_polls(loading), [c for _, ins, _, _ in loading for c in ins],
                               [c for _, _, outs, _ in loading for c in outs], show_progress="hidden")
        self.polls = []


def _disjoint_groups(polls: list[Any]) -> list[list[Any]]:
    groups: list[tuple[set[int], list[Any]]] = []
    for entry in polls:
        ids = {id(c) for c in entry[2]}
        for written, members in groups:
            if not ids & written:
                written |= ids
                members.append(entry)
                break
        else:
            groups.append((ids, [entry]))
    return [members for _, members in groups]


def _run_polls(group: list[Any]) -> Callable[..., list[Any]]:
    """One handler calling each poll with its inputs; a poll that fails leaves its outputs as they were."""

    def poll(*values: Any) -> list[Any]:
        import gradio as gr

        results: list[Any] = []
        start = 0
        for fn, ins, outs, _ in group:
            part, start = values[start : start + len(ins)], start + len(ins)
            try:
                result = fn(*part)
            except Exception:  # a broken poll must not blank the others' status lines
                log.exception("poll %s failed", getattr(fn, "__qualname__", fn))
                results.extend([gr.skip()] * len(outs))
                continue
            results.extend([result] if len(outs) == 1 else list(result))
        return results

    return poll


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


def unseen_job(jobs: JobQueue, state: dict[str, Any], kind: str) -> Any:
    """The newest job of ``kind`` if its id, status or message changed since ``state`` (a poll's own dict,
    by kind) last saw it, now marked seen; else ``None`` (the poll leaves its outputs as they are)."""
    job = jobs.latest(kind)
    key = (job.id, job.status, job.message) if job is not None else None
    if job is None or state.get(kind) == key:
        return None
    state[kind] = key
    return job


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
