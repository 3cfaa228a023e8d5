"""The Caption step's tag editor: bulk edits of the caption table (find/replace, add a tag, remove a tag)
before "Save captions" writes them; built inside the Caption step, under its table."""

from __future__ import annotations

from typing import Any

from lorastory.ui.actions.caption_edit import edit_captions
from lorastory.ui.tabs.common import ok, rows


class CaptionTools:
    """A row of bulk edits on the caption table."""

    def __init__(self) -> None:
        import gradio as gr

        with gr.Row():
            self.find = gr.Textbox(label="Find", elem_id="caption-find")
            self.replace = gr.Textbox(label="Replace with", elem_id="caption-replace")
            self.add = gr.Textbox(label="Add tag to every caption", elem_id="caption-add-tag")
            self.at = gr.Radio(["start", "end"], value="start", label="where")
            self.remove = gr.Textbox(label="Remove tag everywhere", elem_id="caption-remove-tag")
            self.apply_btn = gr.Button("Apply to the table", elem_id="caption-apply-btn")
        self.status = gr.Markdown(elem_id="caption-edit-status")

    def wire(self, table: Any) -> None:
        self.apply_btn.click(self.on_apply, [table, self.find, self.replace, self.add, self.remove, self.at],
                             [table, self.status])

    def on_apply(self, table, find, replace, add, remove, at):
        edited, changed = edit_captions(rows(table), find or "", replace or "", add or "", remove or "", at or "start")
        return edited, ok(f"{changed} caption(s) changed in the table; 'Save captions' writes them")
