"""The PNG Info tab: drop a PNG, read the parameters it was made with, send them to the Story tab
(prompt as its one panel, negative prompt, steps, cfg, size, seed, sampler)."""

from __future__ import annotations

from typing import Any

from lorastory.generate.pngmeta import GenerationParams
from lorastory.ui.actions.pnginfo import FIELD_COLUMNS, png_info, story_fields
from lorastory.ui.tabs.common import Tab, err, ok

# The Story tab's inputs this tab fills, in StoryTab.story_inputs' order (the first 11 of them).
STORY_KEYS = ("title", "character", "style", "negative", "steps", "cfg", "width", "height", "seed", "sampler", "panels")


class PngInfoTab(Tab):
    """The PNG Info tab's components and handlers."""

    label, tab_id = "PNG Info", "pnginfo"

    def build(self) -> None:
        import gradio as gr

        gr.Markdown("Drop a PNG made by lorastory or A1111-style tools to read the parameters stored in it.")
        with gr.Row():
            self.file = gr.File(label="PNG", file_types=[".png"], type="filepath", elem_id="pnginfo-file")
            with gr.Column():
                self.text = gr.Textbox(label="Parameters (A1111 infotext)", lines=5, interactive=False,
                                       elem_id="pnginfo-text", elem_classes="mono")
                self.table = gr.Dataframe(headers=FIELD_COLUMNS, interactive=False, elem_id="pnginfo-table")
        self.send_btn = gr.Button("Send to the Story tab", elem_id="pnginfo-send-btn")
        self.status = gr.Markdown(elem_id="pnginfo-status")
        self.params = gr.State(None)

    def wire(self, story: Any) -> None:
        """``story`` is the Story tab, whose form "Send" fills."""
        self.story_targets = [*story.story_inputs[: len(STORY_KEYS)], story.true_cfg]
        self.file.change(self.on_file, self.file, [self.text, self.table, self.status, self.params])
        self.send_btn.click(self.on_send, self.params, [self.status, *self.story_targets])

    def on_file(self, path):
        if not path:
            return "", [], "", None
        try:
            info = png_info(self.ws, path)
        except Exception as error:
            return "", [], err(error), None
        return info["text"], info["rows"], "", info["params"].to_dict()

    def on_send(self, params):
        import gradio as gr

        if not params:
            return ["**Error:** drop a PNG with parameters first", *[gr.skip()] * (len(STORY_KEYS) + 1)]
        fields = story_fields(GenerationParams.from_dict(params))
        values = [gr.skip() if fields[key] is None else fields[key] for key in STORY_KEYS]
        true_cfg = fields["true_cfg"]  # a distilled model's panel: its true CFG, or cleared
        values.append(gr.skip() if true_cfg is None else gr.update(value=true_cfg or None, visible=True))
        return [ok("sent to the Story tab (its first panel, settings and seed)"), *values]
