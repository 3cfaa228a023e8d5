"""The job queue, above the tabs so it is visible on every one: each queued or running job with
its progress, and a Cancel for the one picked (a queued job is dropped, a running one stops at
its next step and keeps what it has written)."""

from __future__ import annotations

from typing import Any

from lorastory.ui.tabs.common import AppContext, Clock, progress_md


class QueuePanel:
    """The queue row of the page; built where it is constructed."""

    def __init__(self, ctx: AppContext) -> None:
        import gradio as gr

        self.ctx = ctx
        with gr.Row(equal_height=True):
            with gr.Column(scale=4):
                self.list_md = gr.Markdown("**Queue:** no jobs", elem_id="job-queue")
            with gr.Column(scale=1, min_width=220):
                self.pick = gr.Dropdown(label="Job", choices=[], value=None, elem_id="queue-pick")
                self.cancel_btn = gr.Button("Cancel job", variant="stop", size="sm", elem_id="queue-cancel-btn")
        self.status = gr.Markdown(elem_id="queue-status")

    def wire(self, clock: Clock) -> None:
        import gradio as gr

        seen = gr.State({})
        clock.poll(self.show_queue, [seen, self.pick], [seen, self.list_md, self.pick])
        self.cancel_btn.click(self.on_cancel, self.pick, self.status, queue=False)  # not behind the polls

    def show_queue(self, state: dict[str, Any], picked: Any) -> list[Any]:
        """The active jobs (text where it changed; the picker's choices only when the set of jobs changed)."""
        import gradio as gr

        state = dict(state or {})
        active = [j for j in self.ctx.jobs.jobs() if j.active][::-1]  # oldest (running) first
        text = "**Queue:** " + ("no jobs" if not active else "") + "".join(f"\n\n{progress_md(j)}" for j in active)
        ids = [j.id for j in active]
        update_text = gr.skip() if state.get("text") == text else text
        update_pick: Any = gr.skip()
        if state.get("ids") != ids:
            choices = [(f"#{j.id} {j.title}", j.id) for j in active]
            update_pick = gr.update(choices=choices, value=picked if picked in ids else (ids[0] if ids else None))
        state.update(text=text, ids=ids)
        return [state, update_text, update_pick]

    def on_cancel(self, picked: Any) -> str:
        if picked is None or picked == "":
            return "**Error:** pick a job first"
        job_id = int(picked)
        if not self.ctx.jobs.cancel(job_id):
            return f"job #{job_id} has already ended"
        job = self.ctx.jobs.get(job_id)
        return f"**Stopping:** {job.summary()}" if job is not None else f"job #{job_id} cancelled"
