"""The Data tab's recipe picker: load a shipped example recipe or one saved in the workspace
(``recipes/NAME.yaml``) into the editor, pointed at the chosen dataset, comments kept."""

from __future__ import annotations

from typing import Any

from lorastory.ui.defaults import app_defaults, recipe_choices, recipe_text
from lorastory.ui.tabs.common import AppContext, err


class RecipeLoader:
    """A row above the recipe editor: the recipe list and Load; built where it is constructed."""

    def __init__(self, ctx: AppContext) -> None:
        import gradio as gr

        self.ctx, self.ws = ctx, ctx.ws
        with gr.Row():
            self.choice = gr.Dropdown(label="Start from a recipe (examples, then yours)", choices=recipe_choices(self.ws),
                                      value=app_defaults(self.ws).recipe, allow_custom_value=True, elem_id="recipe-pick")
            self.load_btn = gr.Button("Load recipe", elem_id="recipe-load-btn")
            self.status = gr.Markdown(elem_id="recipe-load-status")

    def wire(self, editor: Any, dataset: Any, name: Any) -> None:
        self.load_btn.click(self.on_load, [self.choice, dataset, name], [editor, self.status, self.choice])

    def on_load(self, choice, dataset, name):
        import gradio as gr

        try:
            text = recipe_text(self.ws, choice or "", dataset or None, name or "curated")
        except Exception as error:
            return gr.skip(), err(error), gr.skip()
        return text, "", gr.update(choices=recipe_choices(self.ws))
