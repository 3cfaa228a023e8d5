"""The Data tab's Caption step: caption a dataset's pictures in a job (model, style, language,
trigger word, mode), then edit the captions in a table and save them back to its metadata.jsonl."""

from __future__ import annotations

from typing import Any

from lorastory.ui import actions
from lorastory.ui.jobs import DONE
from lorastory.ui.tabs.caption_tools import CaptionTools
from lorastory.ui.tabs.common import AppContext, Clock, err, md_list, ok, progress_md, rows, unseen_job


class CaptionStep:
    """The Caption row of the Data tab; built where it is constructed, inside the tab."""

    def __init__(self, ctx: AppContext) -> None:
        import gradio as gr

        self.ctx, self.ws = ctx, ctx.ws
        gr.Markdown("### Caption pictures (optional)\nWrite captions for a dataset's pictures with a captioner "
                    "(`toy`, a folder under `models/`, or a hub id), then edit them in the table and save.")
        with gr.Row():
            self.dataset = gr.Dropdown(label="Dataset to caption", choices=actions.dataset_choices(self.ws), allow_custom_value=True,
                                       elem_id="caption-dataset")
            self.model = gr.Dropdown(label="Captioner", choices=actions.captioner_choices(self.ws), value="toy",
                                     allow_custom_value=True, elem_id="caption-model")
            self.style = gr.Radio(["sentence", "tags"], value="sentence", label="Caption style")
            self.language = gr.Radio(["zh", "en"], value="en", label="Caption language")
            self.trigger = gr.Textbox(label="Trigger word", placeholder="optional, put first in every caption")
            self.mode = gr.Radio(["fill", "replace", "append"], value="fill", label="Caption mode",
                                 info="fill: only empty captions; replace: all; append: after the old text")
        with gr.Row():
            self.caption_btn = gr.Button("Caption", variant="primary", elem_id="caption-btn")
            self.load_btn = gr.Button("Show captions", elem_id="caption-load-btn")
        self.status = gr.Markdown(elem_id="caption-status", elem_classes="status")
        self.table = gr.Dataframe(headers=actions.CAPTION_COLUMNS, interactive=True, label="Captions (editable)",
                                  elem_id="caption-table")
        self.tools = CaptionTools()
        self.save_btn = gr.Button("Save captions", elem_id="caption-save-btn")
        self.save_status = gr.Markdown(elem_id="caption-save-status")

    def wire(self, clock: Clock) -> None:
        import gradio as gr

        form = [self.dataset, self.model, self.style, self.language, self.trigger, self.mode]
        self.caption_btn.click(self.on_caption, form, self.status)
        self.load_btn.click(self.on_load, self.dataset, [self.table, self.save_status])
        self.save_btn.click(self.on_save, [self.dataset, self.table], self.save_status)
        self.tools.wire(self.table)
        seen = gr.State({})
        clock.poll(self.poll, seen, [seen, self.status, self.table, self.dataset])

    def refresh(self) -> tuple[Any, Any]:
        import gradio as gr

        return gr.update(choices=actions.dataset_choices(self.ws)), gr.update(choices=actions.captioner_choices(self.ws))

    def on_caption(self, dataset, model, style, language, trigger, mode):
        try:
            job = self.ctx.jobs.submit("caption", f"caption {dataset}",
                                       actions.caption_job(self.ws, dataset, model, style, language, trigger, mode))
        except Exception as error:
            return err(error)
        return f"**Queued:** {job.summary()}"

    def on_load(self, dataset):
        try:
            return actions.caption_rows(self.ws, dataset), ""
        except Exception as error:
            return [], err(error)

    def on_save(self, dataset, table):
        try:
            changed = actions.save_captions(self.ws, dataset, rows(table))
        except Exception as error:
            return err(error)
        return ok(f"{changed} caption(s) changed in `{dataset}`")

    def poll(self, state: dict[str, Any]) -> list[Any]:
        """The newest caption job's progress; its captions in the table once it is done."""
        import gradio as gr

        state = dict(state or {})
        job = unseen_job(self.ctx.jobs, state, "caption")
        if job is None:
            return [state, gr.skip(), gr.skip(), gr.skip()]
        text, table, dataset = progress_md(job), gr.skip(), gr.skip()
        if job.status == DONE and job.result:
            result = job.result
            text += f"\n\n{result['captioned']} captioned, {result['kept']} kept"
            if result["failed"]:
                text += f", {len(result['failed'])} failed:\n\n" + md_list(result["failed"])
            try:
                table = actions.caption_rows(self.ws, result["dataset"])
                dataset = gr.update(value=result["dataset"])  # Save writes to the dataset the table shows
            except Exception as error:
                text += f"\n\n{err(error)}"
        return [state, text, table, dataset]
