"""The Train tab's own presets: save the form's settings under a name in the workspace
(``presets/train/NAME.yaml``) and pick them again from the Preset list (``saved: NAME``)."""

from __future__ import annotations

from typing import Any

from lorastory.ui.defaults import SAVED, preset_choices, save_user_preset
from lorastory.ui.presets import TRAIN_FIELDS
from lorastory.ui.tabs.common import AppContext, err, ok


class PresetStore:
    """A row under the Train form: a preset name and Save; built where it is constructed."""

    def __init__(self, ctx: AppContext) -> None:
        import gradio as gr

        self.ctx, self.ws = ctx, ctx.ws
        with gr.Row():
            self.name = gr.Textbox(label="Save these settings as a preset named", placeholder="e.g. my-toy-run",
                                   elem_id="preset-name")
            self.save_btn = gr.Button("Save preset", elem_id="preset-save-btn")
            self.status = gr.Markdown(elem_id="preset-status")

    def wire(self, preset: Any, inputs: list[Any]) -> None:
        self.save_btn.click(self.on_save, [self.name, *inputs], [self.status, preset])

    def on_save(self, name, *values):
        import gradio as gr

        try:
            path = save_user_preset(self.ws, name, dict(zip(TRAIN_FIELDS, values)))
        except Exception as error:
            return err(error), gr.skip()
        choice = SAVED + path.stem
        return ok(f"saved `{self.ws.rel(path)}`"), gr.update(choices=preset_choices(self.ws), value=choice)
