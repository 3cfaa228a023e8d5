"""The Gallery / Eval tab: earlier story runs with the parameters read back from their PNGs,
manifests and scores; scoring a run; earlier training runs with their config and samples."""

from __future__ import annotations

import json
from typing import Any

from lorastory.ui import actions
from lorastory.ui.actions.families import model_picker
from lorastory.ui.tabs.common import Clock, Tab, err, progress_md, unseen_job
from lorastory.ui.tabs.compare import CompareView


class GalleryTab(Tab):
    """The Gallery / Eval tab's components (built in the order they appear) and its handlers."""

    label, tab_id = "Gallery / Eval", "gallery"

    def build(self) -> None:
        self._build_runs()
        self._build_eval()
        self.on_off = CompareView(self.ctx)
        self._build_train_runs()

    # ------------------------------------------------------------------ layout

    def _build_runs(self) -> None:
        import gradio as gr

        with gr.Row():
            self.run = gr.Dropdown(label="Story run", choices=actions.story_runs(self.ws), allow_custom_value=True,
                                   elem_id="gallery-run")
            self.refresh_btn = gr.Button("Refresh lists")
        self.board = gr.Image(label="Storyboard", type="filepath", interactive=False, height=360)
        self.panels = gr.Gallery(label="Panels", columns=4, height=220, object_fit="contain", elem_classes="wrap-labels")
        self.params = gr.Dataframe(headers=actions.PARAM_COLUMNS, interactive=False,
                                   label="Parameters read from each PNG", elem_id="gallery-params")
        with gr.Row():
            self.manifest = gr.JSON(label="manifest.json")
            self.scores = gr.JSON(label="scores.json")

    def _build_eval(self) -> None:
        import gradio as gr

        gr.Markdown("### Score a run")
        with gr.Row():
            clips = actions.clip_choices(self.ws)
            self.clip = gr.Dropdown(label="CLIP model (folder in models/)", choices=clips, allow_custom_value=True,
                                    value=actions.DEFAULT_CLIP if actions.DEFAULT_CLIP in clips else None)
            self.compare = gr.Checkbox(label="LoRA on/off comparison", value=False, elem_id="eval-compare")
            self.eval_btn = gr.Button("Score run", elem_id="eval-btn")
        self.eval_status = gr.Markdown(elem_id="eval-status")

    def _build_train_runs(self) -> None:
        import gradio as gr

        gr.Markdown("### Training runs")
        with gr.Row():
            self.train_run = gr.Dropdown(label="Training run", choices=actions.train_runs(self.ws), allow_custom_value=True)
            self.train_cfg = gr.Textbox(label="config.yaml", lines=8, interactive=False, elem_classes="mono")
        self.train_samples = gr.Gallery(label="Samples", columns=6, height=200, elem_id="gallery-train-samples",
                                        elem_classes="wrap-labels")  # long prompts wrap, not clip

    # ------------------------------------------------------------------ events

    def wire(self, clock: Clock, train_model: Any, story_model: Any, story_lora: Any, story_ip_adapter: Any) -> None:
        """Wire the tab's events; "Refresh lists" also refreshes the other tabs' model, LoRA and IP-Adapter lists."""
        import gradio as gr

        self.run.change(self.on_gallery_run, self.run, [self.board, self.panels, self.params, self.manifest, self.scores])
        self.refresh_btn.click(self.on_refresh, None, [self.run, self.train_run, self.clip, train_model, story_model,
                                                       story_lora, story_ip_adapter])
        self.train_run.change(self.on_train_run, self.train_run, [self.train_cfg, self.train_samples])
        self.eval_btn.click(self.on_eval, [self.run, self.clip, self.compare], self.eval_status)
        seen = gr.State({})
        clock.poll(self.poll, seen, [seen, self.eval_status])
        self.on_off.wire(clock, self.run)

    def on_gallery_run(self, run):
        import gradio as gr

        if not run:
            return [gr.skip()] * 5
        try:
            details = actions.run_details(self.ws, run)
        except Exception as error:
            gr.Warning(str(error))
            return [gr.skip()] * 5
        return (details["storyboard"], details["panels"], details["rows"], details["manifest"], details["scores"])

    def on_refresh(self):
        import gradio as gr

        ws = self.ws
        return (gr.update(choices=actions.story_runs(ws)), gr.update(choices=actions.train_runs(ws)),
                gr.update(choices=actions.clip_choices(ws)), gr.update(choices=model_picker(ws)),
                gr.update(choices=model_picker(ws)), gr.update(choices=[""] + actions.lora_choices(ws)),
                gr.update(choices=[""] + actions.ip_adapter_choices(ws)))

    def on_train_run(self, run):
        import gradio as gr

        if not run:
            return gr.skip(), gr.skip()
        try:
            folder = self.ws.resolve(run, must_exist=True)
            text = (folder / "config.yaml").read_text(encoding="utf-8")
        except Exception as error:
            return err(error), []
        return text, actions.run_samples(self.ws, str(folder))

    def on_eval(self, run, clip, compare):
        try:
            job = self.ctx.jobs.submit("eval", f"score {run}", actions.eval_job(self.ws, run, clip, bool(compare)),
                                       key=f"{run}#scores")
        except Exception as error:
            return err(error)
        return f"**Queued:** {job.summary()}"

    def poll(self, state: dict[str, Any]) -> list[Any]:
        """The newest scoring job's status, and its summary once done."""
        import gradio as gr

        state = dict(state or {})
        job = unseen_job(self.ctx.jobs, state, "eval")
        if job is None:
            return [state, gr.skip()]
        text = progress_md(job)
        if job.status == "done" and job.result:
            text += "\n\n```json\n" + json.dumps(job.result.get("summary"), ensure_ascii=False, indent=2) + "\n```"
        return [state, text]
