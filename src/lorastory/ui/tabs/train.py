"""The Train tab: the training form with presets (read from the shipped examples), a background
job, its loss plot, samples and log, and the queue of every running job."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from lorastory.ui import actions
from lorastory.ui.presets import TRAIN_FIELDS, load_presets
from lorastory.ui.tabs.common import AppContext, Clock, err, ok, progress_md, stop_latest


class TrainTab:
    """The Train tab's components (built in the order they appear) and its handlers."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.ws = ctx.ws
        with gr.Tab("Train", id="train"):
            self._build_form()
            self._build_progress()

    # ------------------------------------------------------------------ layout

    def _build_form(self) -> None:
        presets = load_presets()
        names = list(presets)
        first = presets[names[0]]
        with gr.Row():
            self.preset = gr.Dropdown(label="Preset", choices=names, value=names[0], elem_id="preset")
            self.model = gr.Dropdown(label="Model", choices=actions.model_choices(self.ws), value=actions.DEFAULT_MODEL,
                                     allow_custom_value=True)
            self.data = gr.Dropdown(label="Training folder", choices=actions.train_folder_choices(self.ws),
                                    allow_custom_value=True, elem_id="train-data")
            self.name = gr.Textbox(label="Run name", value="style-lora", elem_id="run-name")
        with gr.Row():
            rank = gr.Number(label="rank", value=first["rank"], precision=0)
            alpha = gr.Number(label="alpha", value=first["alpha"])
            resolution = gr.Number(label="resolution", value=first["resolution"], precision=0)
            epochs = gr.Number(label="epochs", value=first["epochs"], precision=0)
            max_steps = gr.Number(label="max steps (0: epochs decide)", value=first["max_steps"], precision=0)
            batch_size = gr.Number(label="batch size", value=first["batch_size"], precision=0)
            grad_acc = gr.Number(label="gradient accumulation", value=first["gradient_accumulation"], precision=0)
            lr = gr.Number(label="learning rate", value=first["lr"])
        with gr.Row():
            center_crop = gr.Checkbox(label="center crop", value=first["center_crop"])
            random_flip = gr.Checkbox(label="random flip", value=first["random_flip"])
            buckets = gr.Checkbox(label="aspect buckets", value=first["buckets"])
            grad_ckpt = gr.Checkbox(label="gradient checkpointing", value=first["gradient_checkpointing"])
            train_te = gr.Checkbox(label="train text encoder", value=first["train_text_encoder"])
            precision = gr.Dropdown(label="precision", choices=["auto", "no", "fp16", "bf16"], value=first["precision"])
            optimizer = gr.Dropdown(label="optimizer", choices=["adamw", "adamw8bit"], value=first["optimizer"])
        # In the order of TRAIN_FIELDS: what a preset sets.
        self.preset_inputs = [rank, alpha, resolution, epochs, max_steps, batch_size, grad_acc, lr, center_crop,
                              random_flip, buckets, grad_ckpt, precision, optimizer, train_te]
        with gr.Row():
            self.ckpt_every = gr.Number(label="checkpoint every (steps, 0: off)", value=0, precision=0)
            self.val_every = gr.Number(label="samples every (steps, 0: off)", value=0, precision=0)
            self.seed = gr.Number(label="seed", value=0, precision=0)
            self.resume = gr.Checkbox(label="resume from the newest checkpoint", value=False)
        self.val_prompts = gr.Textbox(label="Validation prompts (one per line)", lines=2, value="二次元，一个女孩")

    def _build_progress(self) -> None:
        with gr.Row():
            self.train_btn = gr.Button("Start training", variant="primary", elem_id="train-btn")
            self.stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-train-btn")
        self.status = gr.Markdown(elem_id="train-status", elem_classes="status")
        with gr.Row():
            self.loss_plot = gr.LinePlot(x="step", y="loss", title="Training loss", height=260, elem_id="loss-plot")
            self.samples = gr.Gallery(label="Validation samples", columns=4, height=260)
        with gr.Row():
            self.ckpt_plot = gr.Image(label="Checkpoint scores (the chosen step dashed)", type="filepath",
                                      interactive=False, height=320, elem_id="checkpoint-plot")
            with gr.Column():
                self.ckpt_md = gr.Markdown(elem_id="checkpoint-choice")
                self.ckpt_btn = gr.Button("Score checkpoints and LoRA scales", elem_id="score-checkpoints-btn")
        self.log = gr.Textbox(label="Log", lines=6, max_lines=12, interactive=False, elem_classes="mono")
        self.queue_md = gr.Markdown(elem_id="queue")

    # ------------------------------------------------------------------ events

    def wire(self, clock: Clock) -> None:
        self.preset.change(self.on_preset, self.preset, self.preset_inputs)
        self.train_btn.click(self.on_train, [self.model, self.data, self.name, *self.preset_inputs, self.ckpt_every,
                                             self.val_every, self.seed, self.resume, self.val_prompts], self.status)
        self.stop_btn.click(stop_latest(self.ctx, "train"), None, self.status)
        self.ckpt_btn.click(self.on_score_checkpoints, self.name, self.status)
        seen = gr.State({})
        clock.poll(self.poll, seen, [seen, self.status, self.loss_plot, self.samples, self.log, self.queue_md,
                                     self.ckpt_plot, self.ckpt_md])

    def on_preset(self, name):
        values = load_presets()[name]
        return [values[k] for k in TRAIN_FIELDS]

    def on_train(self, model, data, name, *values):
        *form_values, ckpt, val_ev, seed_value, resume_value, prompts = values
        form = dict(zip(TRAIN_FIELDS, form_values))
        form.update(checkpoint_every=ckpt or 0, validation_every=val_ev or 0, seed=seed_value or 0,
                    resume=bool(resume_value), validation_prompts=prompts)
        try:
            config = actions.train_config(self.ws, model, data, name, form)
            job = self.ctx.jobs.submit("train", f"train {name}", actions.train_job(self.ws, config))
        except Exception as error:
            return err(error)
        return f"**Queued:** {job.summary()}"

    def on_score_checkpoints(self, name):
        try:
            job = self.ctx.jobs.submit("train", f"checkpoints of {name}",
                                       actions.checkpoints_job(self.ws, f"runs/{name}"))
        except Exception as error:
            return err(error)
        return f"**Queued:** {job.summary()}"

    def poll(self, state: dict[str, Any]) -> list[Any]:
        """The newest training job (status, loss plot, samples, log), the queue, and the run's checkpoint
        scores when it has them, where changed."""
        state = dict(state or {})
        return [state, *self._poll_train(state), self._poll_queue(state), *self._poll_checkpoints(state)]

    def _poll_checkpoints(self, state: dict[str, Any]) -> list[Any]:
        job = self.ctx.jobs.latest("train")
        out = job.data.get("out") if job is not None else None
        key = (out, job.status if job is not None else None)
        if state.get("checkpoints") == key:
            return [gr.skip()] * 2
        state["checkpoints"] = key
        plot, text = actions.checkpoint_choice(self.ws, out)
        return [plot, text]

    def _poll_train(self, state: dict[str, Any]) -> list[Any]:
        job = self.ctx.jobs.latest("train")
        if job is None:
            return [gr.skip()] * 4
        key = (job.id, job.status, len(job.data.get("losses", [])), len(job.log), job.message)
        if state.get("train") == key:
            return [gr.skip()] * 4
        state["train"] = key
        steps, losses = job.data.get("steps", []), job.data.get("losses", [])
        frame = pd.DataFrame({"step": list(steps), "loss": list(losses)})
        status = progress_md(job)
        if job.status == "done" and job.result:
            status += "\n\n" + ok("LoRA: " + ", ".join(f"`{p}`" for p in job.result["lora"]))
        return [status, frame, actions.run_samples(self.ws, job.data.get("out")), "\n".join(job.log[-200:])]

    def _poll_queue(self, state: dict[str, Any]) -> Any:
        active = [j for j in self.ctx.jobs.jobs() if j.active]
        queue_key = tuple((j.id, j.status) for j in active)
        if state.get("queue") == queue_key:
            return gr.skip()
        state["queue"] = queue_key
        return "**Jobs:** " + ("; ".join(j.summary() for j in active) if active else "none running")
