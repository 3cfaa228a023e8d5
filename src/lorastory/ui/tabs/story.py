"""The Story tab: the panels table, consistent-character mode, generate, storyboard, regenerate
a panel, zip. The sampler names are the generator's own (:data:`lorastory.generate.samplers.SAMPLERS`)."""

from __future__ import annotations

import random
from typing import Any

from lorastory.demo import EXAMPLES
from lorastory.generate.samplers import SAMPLERS
from lorastory.generate.story_file import load_story
from lorastory.models.fp8 import BASE_DTYPES
from lorastory.ui import actions
from lorastory.ui.actions.families import FormFit, fit_for, model_picker
from lorastory.ui.defaults import app_defaults
from lorastory.ui.tabs.common import Clock, Tab, err, ok, progress_md, rows, set_initial, stop_latest
from lorastory.ui.tabs.preview import PanelPreview

CONSISTENCY_MODES = [("none: panels independent", "none"), ("attention: panels share self-attention", "attention"),
                     ("reference: one reference image (IP-Adapter)", "reference"), ("both", "both")]
EMPTY_PANEL = ["", "", None, ""]


def example_stories() -> list[str]:
    return sorted(p.name for p in EXAMPLES.glob("story_*.yaml"))


class StoryTab(Tab):
    """The Story tab's components (built in the order they appear) and its handlers."""

    label, tab_id = "Story", "story"

    def build(self) -> None:
        self.fit = app_defaults(self.ws)  # the toy story on the toy model, a real model's example on a GPU
        self._build_story()
        self._build_panels()
        self.preview = PanelPreview(self.ctx)
        self._build_run()
        set_initial(self.example, self.fit.story)
        for component, value in zip(self.story_inputs, self.on_load_example(self.fit.story)):
            set_initial(component, value)

    # ------------------------------------------------------------------ layout

    def _build_story(self) -> None:
        import gradio as gr

        with gr.Row():
            self.example = gr.Dropdown(label="Start from an example", choices=example_stories(), value=None,
                                       elem_id="story-example")
            self.load_example_btn = gr.Button("Load example")
        with gr.Row():
            title = gr.Textbox(label="Title", elem_id="story-title")
            character = gr.Textbox(label="Character (before every prompt)", elem_id="story-character")
            style = gr.Textbox(label="Style (after every prompt)", elem_id="story-style")
        self.form_fit = fit = fit_for(self.ws, self.fit.model)
        negative = gr.Textbox(label="Negative prompt", value="", info=fit.negative_info, elem_id="story-negative")
        with gr.Row():
            steps = gr.Number(label="steps", value=50, precision=0, elem_id="story-steps")
            cfg = gr.Number(label=fit.cfg_label, value=4.0, info=fit.cfg_info, elem_id="story-cfg")
            # Guidance-distilled models only (Family.true_cfg_argument): empty or 1 is off.
            true_cfg = gr.Number(label="true CFG (> 1: a second pass on the negative prompt)", value=None,
                                 minimum=1, visible=fit.distilled, elem_id="story-true-cfg")
            width = gr.Number(label="width", value=1024, precision=0, elem_id="story-width")
            height = gr.Number(label="height", value=1024, precision=0, elem_id="story-height")
            seed = gr.Number(label="seed", value=0, precision=0)
            sampler = gr.Dropdown(label="sampler", choices=list(SAMPLERS), value="Euler")
        with gr.Row():
            mode = gr.Dropdown(label="Consistent character", choices=CONSISTENCY_MODES, value="none",
                               elem_id="story-consistency")
            strength = gr.Slider(label="consistency strength", minimum=0, maximum=1, step=0.05, value=1.0,
                                 elem_id="story-consistency-strength")
            reference = gr.Textbox(label="Reference image (workspace path; empty: generated)", value="",
                                   elem_id="story-reference")
            self.ip_adapter = gr.Dropdown(label="IP-Adapter (folder in models/ or hub id; empty: the model's default)",
                                          choices=[""] + actions.ip_adapter_choices(self.ws), value="",
                                          allow_custom_value=True, elem_id="story-ip-adapter")
        # The seed column is text: an empty seed shows empty (a number column shows 0) and means story seed + n - 1.
        self.panels = gr.Dataframe(headers=actions.STORY_COLUMNS, datatype=["str", "str", "str", "str"],
                                   value=[list(EMPTY_PANEL), list(EMPTY_PANEL)], interactive=True, column_count=4,
                                   label="Panels (prompt, caption, seed: empty = story seed + n - 1)", elem_id="panels")
        separator = gr.Textbox(label="Prompt separator (between character, prompt and style)", value=",",
                               elem_id="story-separator")
        # What form_story reads, in its order (and what loading an example fills).
        self.story_inputs = [title, character, style, negative, steps, cfg, width, height, seed, sampler, self.panels,
                             mode, strength, reference, self.ip_adapter, separator, true_cfg]
        self.cfg, self.negative, self.true_cfg = cfg, negative, true_cfg

    def _build_panels(self) -> None:
        import gradio as gr

        with gr.Row():
            self.add_panel_btn = gr.Button("Add panel")
            self.remove_panel_btn = gr.Button("Remove last panel")
            self.move_from = gr.Number(label="move panel", value=2, precision=0, minimum=1)
            self.move_to = gr.Number(label="to position", value=1, precision=0, minimum=1)
            self.move_btn = gr.Button("Move")
        with gr.Row():
            self.model = gr.Dropdown(label="Model", choices=model_picker(self.ws), value=self.fit.model,
                                     allow_custom_value=True)
            self.lora = gr.Dropdown(label="LoRA (optional)", choices=[""] + actions.lora_choices(self.ws), value="",
                                    allow_custom_value=True, elem_id="story-lora")
            self.scale = gr.Slider(label="LoRA scale (a swept LoRA's recommended one)", minimum=0, maximum=2, step=0.05,
                                   value=0.8, elem_id="story-lora-scale")
            self.name = gr.Textbox(label="Run name", value="my-story", elem_id="story-name")
        with gr.Row():
            fit = self.form_fit
            self.family_note = gr.Markdown(fit.note, elem_id="story-family")
            self.base_dtype = gr.Dropdown(label="base dtype for rendering", choices=list(BASE_DTYPES), value="default",
                                          interactive=fit.base_dtype, elem_id="story-base-dtype",
                                          info="fp8 (Ada/Hopper) or fp8-weights: the denoiser's blocks in fp8; "
                                               "CUDA and torchao")
            self.offload = gr.Checkbox(label="offload (small GPU: prompts encoded first, then the denoiser)", value=False,
                                       elem_id="story-offload")

    def _build_run(self) -> None:
        import gradio as gr

        with gr.Row():
            self.gen_btn = gr.Button("Generate story", variant="primary", elem_id="generate-btn")
            self.stop_btn = gr.Button("Stop", variant="stop")
        self.status = gr.Markdown(elem_id="story-status", elem_classes="status")
        self.storyboard = gr.Image(label="Storyboard", type="filepath", interactive=False, elem_id="storyboard", height=360)
        self.story_panels = gr.Gallery(label="Panels", columns=4, height=220, object_fit="contain",
                                       elem_classes="wrap-labels")
        with gr.Row():
            self.regen_index = gr.Number(label="Regenerate panel", value=1, precision=0, minimum=1)
            self.regen_seed = gr.Textbox(label="with seed (empty: random)", value="")
            self.regen_btn = gr.Button("Regenerate panel", elem_id="regen-btn")
            self.zip_btn = gr.Button("Make zip (panels, storyboard, manifest)", elem_id="zip-btn")
        self.story_zip = gr.File(label="Download", interactive=False, elem_id="story-zip", height=80)
        self.current_run = gr.State(None)
        with gr.Accordion("Story YAML", open=False):
            self.story_yaml = gr.Textbox(lines=10, elem_classes="mono", label="story.yaml (read-only view of the form)",
                                         interactive=False)

    # ------------------------------------------------------------------ events

    def wire(self, clock: Clock) -> None:
        import gradio as gr

        self.lora.change(self.on_lora, self.lora, self.scale)
        self.gen_btn.click(self.on_generate, [*self.story_inputs, self.model, self.lora, self.scale, self.name,
                                              self.base_dtype, self.offload], [self.status, self.story_yaml])
        self.model.change(self.on_model, self.model, self.family_fields())
        self.stop_btn.click(stop_latest(self.ctx, "story"), None, self.status, queue=False)  # not behind the polls
        self.preview.wire(clock, self)
        self.load_example_btn.click(self.on_load_example, self.example, self.story_inputs)
        # Table edits skip the server's queue: they answer at once while the polls and a job keep it busy.
        self.add_panel_btn.click(on_add_panel, self.panels, self.panels, queue=False)
        self.remove_panel_btn.click(on_remove_panel, self.panels, self.panels, queue=False)
        self.move_btn.click(on_move, [self.panels, self.move_from, self.move_to], self.panels, queue=False)
        self.regen_btn.click(self.on_regenerate, [self.current_run, self.regen_index, self.regen_seed], self.status)
        self.zip_btn.click(self.on_zip, self.current_run, [self.status, self.story_zip])
        seen = gr.State({})
        clock.poll(self.poll, seen, [seen, self.status, self.storyboard, self.story_panels, self.current_run])

    def form_story(self, title, character, style, negative, steps, cfg, width, height, seed_value, sampler, table,
                   mode, strength, reference, ip_adapter, separator=None, true_cfg=None, *_more):
        defaults = {"steps": steps, "cfg": cfg, "width": width, "height": height, "seed": seed_value, "sampler": sampler,
                    "true_cfg": true_cfg}
        consistency = actions.consistency_from_form(self.ws, mode, strength, reference, ip_adapter)
        return actions.story_from_form(title, character, style, negative, rows(table), defaults, consistency, separator)

    def on_generate(self, *values):
        import gradio as gr

        *story_values, model, lora, scale, name, base_dtype, offload = values
        try:
            story = self.form_story(*story_values)
            # An identical job already queued is refused; a name in use gets a free one (nothing is overwritten).
            fingerprint = f"story|{model}|{lora}|{float(scale)}|{base_dtype}|{bool(offload)}|{story.to_yaml()}"
            free = actions.free_run_name(self.ws, "stories", str(name or "").strip(), self.ctx.jobs.active_keys())
            run = actions.story_job(self.ws, story, model, lora or None, float(scale), free,
                                    base_dtype=base_dtype or "default", offload=bool(offload))
            job = self.ctx.jobs.submit("story", f"story {free}", run, key=f"stories/{free}", fingerprint=fingerprint)
        except Exception as error:
            return err(error), gr.skip()
        note = f" (stories/{name} is taken: this run is stories/{free})" if free != str(name).strip() else ""
        return f"**Queued:** {job.summary()}{note}", story.to_yaml()

    def family_fields(self) -> list[Any]:
        """The fields a family can rule out, in :func:`fit_updates`' order."""
        return [self.family_note, self.cfg, self.negative, self.true_cfg, self.base_dtype]

    def on_model(self, model):
        """Fit the form to the chosen model's family: cfg or guidance, true CFG only where it applies."""
        return fit_updates(fit_for(self.ws, model))

    def on_lora(self, lora):
        """The LoRA scale defaults to the one ``lorastory eval sweep`` recommended for the chosen LoRA."""
        import gradio as gr

        scale = actions.recommended_scale(self.ws, lora)
        return gr.skip() if scale is None else scale

    def on_load_example(self, name):
        import gradio as gr

        if not name:
            return [gr.skip()] * len(self.story_inputs)
        *values, true_cfg = actions.story_form_values(load_story(EXAMPLES / name))
        # A story with true CFG shows the field whatever the model (the generate button then says if it does not apply).
        return (*values, true_cfg if true_cfg is None else gr.update(value=true_cfg, visible=True))

    def on_regenerate(self, run, index, seed_value):
        if not run:
            return "**Error:** generate a story first (or pick one in Gallery / Eval)"
        try:
            new_seed = int(str(seed_value).strip()) if str(seed_value or "").strip() else random.randrange(2**31)
        except ValueError:
            return f"**Error:** seed '{seed_value}' is not a whole number"
        try:
            job = self.ctx.jobs.submit("story", f"panel {int(index)} of {self.ws.rel(run)}",
                                       actions.regenerate_job(self.ws, run, int(index), new_seed), key=self.ws.rel(run))
        except Exception as error:
            return err(error)
        return f"**Queued:** {job.summary()} (seed {new_seed})"

    def on_zip(self, run):
        import gradio as gr

        if not run:
            return "**Error:** generate a story first", gr.skip()
        try:
            path = actions.story_zip(self.ws, run)
        except Exception as error:
            return err(error), gr.skip()
        return ok(f"`{self.ws.rel(path)}` is ready"), str(path)

    def poll(self, state: dict[str, Any]) -> list[Any]:
        """The newest story job: status, and once done its storyboard, panels and run folder."""
        import gradio as gr

        state = dict(state or {})
        job = self.ctx.jobs.latest("story")
        if job is None:
            return [state, *[gr.skip()] * 4]
        key = (job.id, job.status, round(job.progress, 3), job.message)
        if state.get("story") == key:
            return [state, *[gr.skip()] * 4]
        state["story"] = key
        if job.status == "done" and job.data.get("run"):
            details = actions.run_details(self.ws, job.data["run"])
            return [state, progress_md(job) + "\n\n" + ok(f"`{self.ws.rel(details['folder'])}`"),
                    details["storyboard"], details["panels"], str(details["folder"])]
        return [state, progress_md(job), gr.skip(), gr.skip(), gr.skip()]


def on_add_panel(table):
    return rows(table) + [list(EMPTY_PANEL)]


def on_remove_panel(table):
    table = rows(table)
    return table[:-1] if len(table) > 1 else table


def on_move(table, src, dst):
    table = rows(table)
    src, dst = int(src or 1) - 1, int(dst or 1) - 1
    if 0 <= src < len(table) and 0 <= dst < len(table):
        table.insert(dst, table.pop(src))
    return table


def fit_updates(fit: FormFit) -> list[Any]:
    """Updates of the family fields (note, cfg, negative prompt, true CFG, base dtype) for ``fit``."""
    import gradio as gr

    true_cfg = gr.update(visible=True) if fit.distilled else gr.update(visible=False, value=None)
    base = gr.update(interactive=True) if fit.base_dtype else gr.update(value="default", interactive=False)
    return [fit.note, gr.update(label=fit.cfg_label, info=fit.cfg_info), gr.update(info=fit.negative_info), true_cfg,
            base]
