"""The Story tab's try-outs before a whole story: preview one panel, and a LoRA-scale X/Y grid for it
(scales × seeds, or scales × the LoRA's checkpoints). Jobs of kind ``preview``."""

from __future__ import annotations

from typing import Any

from lorastory.ui.actions.preview import GRID_AXES, grid_job, preview_job
from lorastory.ui.jobs import DONE
from lorastory.ui.tabs.common import AppContext, Clock, err, progress_md, unseen_job


class PanelPreview:
    """The preview row of the Story tab; built where it is constructed, inside the tab."""

    def __init__(self, ctx: AppContext) -> None:
        import gradio as gr

        self.ctx, self.ws = ctx, ctx.ws
        with gr.Accordion("Try one panel first: preview, LoRA-scale X/Y grid", open=True):
            with gr.Row():
                self.index = gr.Number(label="panel", value=1, precision=0, minimum=1, elem_id="preview-index")
                self.preview_btn = gr.Button("Preview this panel", elem_id="preview-btn")
                self.scales = gr.Textbox(label="grid rows: LoRA scales", value="0, 0.5, 1", elem_id="grid-scales")
                self.axis = gr.Radio(list(GRID_AXES), value="seeds", label="grid columns", elem_id="grid-axis")
                self.seeds = gr.Textbox(label="seeds (for seed columns)", value="1, 2", elem_id="grid-seeds")
                self.grid_btn = gr.Button("Make X/Y grid", elem_id="grid-btn")
            self.status = gr.Markdown(elem_id="preview-status", elem_classes="status")
            with gr.Row():
                self.image = gr.Image(label="Panel preview", type="filepath", interactive=False, height=280,
                                      elem_id="preview-image")
                self.grid = gr.Image(label="X/Y grid", type="filepath", interactive=False, height=420, elem_id="xy-grid")

    def wire(self, clock: Clock, story: Any) -> None:
        """``story`` is the Story tab: its form gives the panel, model, LoRA, scale and run name."""
        import gradio as gr

        self.story = story
        extra = [story.model, story.lora, story.scale, story.name, story.base_dtype, story.offload]
        self.preview_btn.click(self.on_preview, [self.index, *story.story_inputs, *extra], self.status)
        self.grid_btn.click(self.on_grid, [self.index, self.scales, self.axis, self.seeds, *story.story_inputs, *extra],
                            self.status)
        seen = gr.State({})
        clock.poll(self.poll, seen, [seen, self.status, self.image, self.grid])

    def on_preview(self, index, *values):
        *story_values, model, lora, scale, name, base_dtype, offload = values
        try:
            story = self.story.form_story(*story_values)
            job = self.ctx.jobs.submit("preview", f"preview of panel {int(index or 1)}",
                                       preview_job(self.ws, story, int(index or 1), model, lora or None, float(scale),
                                                   name, base_dtype or "default", bool(offload)))
        except Exception as error:
            return err(error)
        return f"**Queued:** {job.summary()}"

    def on_grid(self, index, scales, axis, seeds, *values):
        *story_values, model, lora, _scale, name, _base_dtype, _offload = values  # the grid: no fast path (fp8 needs it)
        try:
            story = self.story.form_story(*story_values)
            job = self.ctx.jobs.submit("preview", f"X/Y grid of panel {int(index or 1)}",
                                       grid_job(self.ws, story, int(index or 1), model, lora or None, scales, axis,
                                                seeds, name))
        except Exception as error:
            return err(error)
        return f"**Queued:** {job.summary()}"

    def poll(self, state: dict[str, Any]) -> list[Any]:
        """The newest preview job: its status, and once done its picture (the preview or the grid)."""
        import gradio as gr

        state = dict(state or {})
        job = unseen_job(self.ctx.jobs, state, "preview")
        if job is None:
            return [state, gr.skip(), gr.skip(), gr.skip()]
        image = grid = gr.skip()
        if job.status == DONE:
            image = job.data.get("image") or gr.skip()
            grid = job.data.get("grid") or gr.skip()
        return [state, progress_md(job), image, grid]
