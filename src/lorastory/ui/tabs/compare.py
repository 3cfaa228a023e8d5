"""The Gallery / Eval tab's LoRA on/off view: both rows (LoRA on above, off below) and the deltas,
shown for the picked story run and again when a scoring job with the comparison ends."""

from __future__ import annotations

from typing import Any

from lorastory.ui.actions.compare_view import COLUMNS, on_off_view
from lorastory.ui.jobs import DONE
from lorastory.ui.tabs.common import AppContext, Clock


class CompareView:
    """The LoRA on/off block; built where it is constructed, inside the tab."""

    def __init__(self, ctx: AppContext) -> None:
        import gradio as gr

        self.ctx, self.ws = ctx, ctx.ws
        gr.Markdown("### LoRA on / off")
        self.headline = gr.Markdown("Score a run with **LoRA on/off comparison** ticked to see it here.",
                                    elem_id="on-off-headline")
        with gr.Row():
            self.image = gr.Image(label="LoRA on (top row) and off (bottom row)", type="filepath", interactive=False,
                                  height=360, elem_id="on-off-image")
            self.table = gr.Dataframe(headers=COLUMNS, interactive=False, label="Scores with and without the LoRA",
                                      elem_id="on-off-table")
        self.outputs = [self.headline, self.image, self.table]

    def wire(self, clock: Clock, run: Any) -> None:
        import gradio as gr

        run.change(self.show, run, self.outputs)
        seen = gr.State({})
        clock.poll(self.poll, seen, [seen, *self.outputs])

    def show(self, run: str | None) -> list[Any]:
        import gradio as gr

        view = on_off_view(self.ws, run)
        if view is None:
            return [gr.skip()] * 3 if not run else ["No LoRA on/off comparison for this run yet.", None, []]
        return [view["headline"], view["image"], view["rows"]]

    def poll(self, state: dict[str, Any]) -> list[Any]:
        """Once the newest scoring job is done, its run's comparison (if it made one)."""
        import gradio as gr

        state = dict(state or {})
        job = self.ctx.jobs.latest("eval")
        key = (job.id, job.status) if job is not None else None
        if job is None or job.status != DONE or state.get("compare") == key:
            return [state, *[gr.skip()] * 3]
        state["compare"] = key
        view = on_off_view(self.ws, job.data.get("run"))
        if view is None:
            return [state, *[gr.skip()] * 3]
        return [state, view["headline"], view["image"], view["rows"]]
