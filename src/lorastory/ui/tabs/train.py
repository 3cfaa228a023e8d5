"""The Train tab: the training form with presets (read from the shipped examples), a background
job, its loss plot, samples and log, and the queue of every running job."""

from __future__ import annotations

from typing import Any, get_args

from lorastory.models.fp8 import BASE_DTYPES
from lorastory.models.lora.spec import NETWORKS
from lorastory.train.optimizers import PRODIGY_LOW_LR, OptimizerName
from lorastory.ui import actions
from lorastory.ui.actions.families import UNET_TARGETS, FormFit, fit_for, model_picker
from lorastory.ui.defaults import app_defaults, preset_choices, preset_values
from lorastory.ui.presets import CAPTION_FIELDS, TRAIN_FIELDS
from lorastory.ui.tabs.train_presets import PresetStore
from lorastory.ui.tabs.common import Clock, Tab, err, ok, progress_md, stop_latest
from lorastory.ui.tabs.pagestate import train_form_keys

BASE_DTYPE_INFO = "the frozen base's Linear layers: fp8 (Ada/Hopper) or fp8-weights (any CUDA GPU); needs torchao"


class TrainTab(Tab):
    """The Train tab's components (built in the order they appear) and its handlers."""

    label, tab_id = "Train", "train"

    def build(self) -> None:
        self._build_form()
        self._build_progress()

    # ------------------------------------------------------------------ layout

    def _build_form(self) -> None:
        import gradio as gr

        fit = app_defaults(self.ws)  # the toy workflow on a CPU, the reference one with a real model on a GPU
        first = preset_values(self.ws, fit.preset)
        with gr.Row():
            self.preset = gr.Dropdown(label="Preset", choices=preset_choices(self.ws), value=fit.preset, elem_id="preset")
            self.model = gr.Dropdown(label="Model", choices=model_picker(self.ws), value=fit.model,
                                     allow_custom_value=True)
            self.data = gr.Dropdown(label="Training folder", choices=actions.train_folder_choices(self.ws),
                                    allow_custom_value=True, elem_id="train-data")
            self.name = gr.Textbox(label="Run name", value="style-lora", elem_id="run-name")
        self.family_note = gr.Markdown(fit_for(self.ws, fit.model).note, elem_id="train-family")
        with gr.Row():
            rank = gr.Number(label="rank", value=first["rank"], precision=0)
            alpha = gr.Number(label="alpha", value=first["alpha"])
            resolution = gr.Number(label="resolution", value=first["resolution"], precision=0)
            epochs = gr.Number(label="epochs", value=first["epochs"], precision=0)
            max_steps = gr.Number(label="max steps (0: epochs decide)", value=first["max_steps"], precision=0,
                                  elem_id="max-steps")
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
        with gr.Row():
            # Prodigy and Adafactor keep their own settings' defaults here; the YAML and the CLI set them.
            optimizer = gr.Dropdown(label="optimizer", choices=list(get_args(OptimizerName)), value=first["optimizer"],
                                    info="prodigy sets its own step size: use learning rate 1")
            ema = gr.Checkbox(label="EMA of the weights (also saves lora_ema.safetensors)", value=first["ema"])
            ema_decay = gr.Number(label="EMA decay", value=first["ema_decay"])
        with gr.Row():  # the adapter (docs/training.md#lora-variants)
            network = gr.Dropdown(label="network", choices=list(NETWORKS), value=first["network"],
                                  info="locon adds the ResNet convolutions; loha, lokr, dora: LyCORIS/DoRA variants")
            targets = gr.Dropdown(label="target modules", choices=list(UNET_TARGETS), value=first["target_modules"],
                                  multiselect=True, allow_custom_value=True, elem_id="target-modules")
            base_dtype = gr.Dropdown(label="base dtype", choices=list(BASE_DTYPES), value=first["base_dtype"],
                                     info=BASE_DTYPE_INFO, elem_id="train-base-dtype")
        self._lr, self._optimizer = lr, optimizer
        # The fields a family can rule out (FormFit; on_model), in on_model's order.
        self.family_fields = [self.family_note, train_te, network, targets, base_dtype]
        self.presets = PresetStore(self.ctx)
        # In the order of TRAIN_FIELDS: what a preset sets.
        self.preset_inputs = [rank, alpha, resolution, epochs, max_steps, batch_size, grad_acc, lr, center_crop,
                              random_flip, buckets, grad_ckpt, precision, optimizer, train_te, ema, ema_decay, network,
                              targets, base_dtype]
        with gr.Row():
            self.ckpt_every = gr.Number(label="checkpoint every (steps, 0: off)", value=0, precision=0)
            self.val_every = gr.Number(label="samples every (steps, 0: off)", value=0, precision=0)
            self.seed = gr.Number(label="seed", value=0, precision=0)
            self.resume = gr.Checkbox(label="resume from the newest checkpoint", value=False)
        self.val_prompts = gr.Textbox(label="Validation prompts (one per line)", lines=2, value=fit.validation_prompt)
        with gr.Row():  # captions at training time and repeats (docs/training.md), in the order of CAPTION_FIELDS
            self.caption_inputs = [
                gr.Textbox(label="trigger word (put first in every caption)", value=""),
                gr.Number(label="caption dropout (0-1)", value=0.0, minimum=0, maximum=1),
                gr.Checkbox(label="shuffle tags", value=False),
                gr.Number(label="keep first N tags", value=0, precision=0, minimum=0),
                gr.Number(label="repeats", value=1, precision=0, minimum=1),
            ]

    def _build_progress(self) -> None:
        import gradio as gr

        with gr.Row():
            self.train_btn = gr.Button("Start training", variant="primary", elem_id="train-btn")
            self.stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-train-btn")
        self.status = gr.Markdown(elem_id="train-status", elem_classes="status")
        with gr.Row():
            self.loss_plot = gr.LinePlot(x="step", y="loss", color="series", title="Training loss (raw and smoothed)",
                                         height=260, elem_id="loss-plot")
            self.samples = gr.Gallery(label="Validation samples (step: prompt)", columns=4, height=260,
                                      elem_id="train-samples", elem_classes="wrap-labels")
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
        import gradio as gr

        # .input, not .change: a preset put back after a reload must not overwrite the fields put back with it.
        self.preset.input(self.on_preset, self.preset, self.preset_inputs)
        self.presets.wire(self.preset, self.preset_inputs)
        self.model.change(self.on_model, [self.model, self.family_fields[2]], self.family_fields)
        self._optimizer.input(self.on_optimizer, [self._optimizer, self._lr], self._lr)
        self.train_btn.click(self.on_train, [self.model, self.data, self.name, *self.preset_inputs, self.ckpt_every,
                                             self.val_every, self.seed, self.resume, self.val_prompts,
                                             *self.caption_inputs], self.status)
        self.stop_btn.click(stop_latest(self.ctx, "train"), None, self.status, queue=False)  # not behind the polls
        self.ckpt_btn.click(self.on_score_checkpoints, self.name, self.status)
        seen = gr.State({})
        clock.poll(self.poll, seen, [seen, self.status, self.loss_plot, self.samples, self.log, self.queue_md,
                                     self.ckpt_plot, self.ckpt_md])

    def on_preset(self, name):
        import gradio as gr

        try:
            values = preset_values(self.ws, name)
        except Exception as error:
            gr.Warning(str(error))
            return [gr.skip()] * len(TRAIN_FIELDS)
        return [values[k] if k in values else gr.skip() for k in TRAIN_FIELDS]

    def on_model(self, model, network):
        """Fit the form to the chosen model's family: what does not apply is disabled, with a short note why."""
        return fit_updates(fit_for(self.ws, model), network)

    def on_optimizer(self, optimizer, lr):
        """Prodigy's lr multiplies its own estimate (1.0); the others take a step size (the reference 1e-4)."""
        if optimizer == "prodigy":
            return 1.0
        return 1e-4 if lr is not None and lr >= PRODIGY_LOW_LR else lr

    def on_train(self, model, data, name, *values):
        caption_values = values[-len(CAPTION_FIELDS):]
        *form_values, ckpt, val_ev, seed_value, resume_value, prompts = values[: -len(CAPTION_FIELDS)]
        form = dict(zip(TRAIN_FIELDS, form_values))
        form.update(zip(CAPTION_FIELDS, caption_values))
        form.update(checkpoint_every=ckpt or 0, validation_every=val_ev or 0, seed=seed_value or 0,
                    resume=bool(resume_value), validation_prompts=prompts)
        try:
            config = actions.train_config(self.ws, model, data, name, form)
            job = self.ctx.jobs.submit("train", f"train {name}", actions.train_job(self.ws, config), key=f"runs/{name}")
        except Exception as error:
            return err(error)
        job.data["form"] = dict(zip(train_form_keys(), [model, data, name, *values]))  # shown after a reload
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
        import gradio as gr

        job = self.ctx.jobs.latest("train")
        out = job.data.get("out") if job is not None else None
        key = (out, job.status if job is not None else None)
        if state.get("checkpoints") == key:
            return [gr.skip()] * 2
        state["checkpoints"] = key
        plot, text = actions.checkpoint_choice(self.ws, out)
        return [plot, text]

    def _poll_train(self, state: dict[str, Any]) -> list[Any]:
        import gradio as gr

        job = self.ctx.jobs.latest("train")
        if job is None:
            return [gr.skip()] * 4
        key = (job.id, job.status, len(job.data.get("losses", [])), len(job.log), job.message)
        if state.get("train") == key:
            return [gr.skip()] * 4
        state["train"] = key
        steps, losses = job.data.get("steps", []), job.data.get("losses", [])
        # No points yet: an empty plot (an empty frame would fix the series colours before any series exists).
        frame = actions.loss_frame(list(steps), list(losses)) if losses else None
        status = progress_md(job)
        if job.status == "done" and job.result:
            status += "\n\n" + ok("LoRA: " + ", ".join(f"`{p}`" for p in job.result["lora"]))
        return [status, frame, actions.run_samples(self.ws, job.data.get("out")), "\n".join(job.log[-200:])]

    def _poll_queue(self, state: dict[str, Any]) -> Any:
        import gradio as gr

        active = [j for j in self.ctx.jobs.jobs() if j.active]
        queue_key = tuple((j.id, j.status) for j in active)
        if state.get("queue") == queue_key:
            return gr.skip()
        state["queue"] = queue_key
        return "**Jobs:** " + ("; ".join(j.summary() for j in active) if active else "none running")


def fit_updates(fit: FormFit, network: str | None) -> list[Any]:
    """Updates of the family fields (note, train text encoder, network, target modules, base dtype) for ``fit``."""
    import gradio as gr

    te = gr.update(interactive=True, info="") if fit.text_encoder else gr.update(
        value=False, interactive=False, info=fit.text_encoder_info)
    networks = list(fit.networks) if fit.networks is not None else list(NETWORKS)
    net = gr.update(choices=networks, value=network if network in networks else networks[0])
    base = gr.update(interactive=True) if fit.base_dtype else gr.update(value="default", interactive=False)
    return [fit.note, te, net, gr.update(choices=list(fit.targets)), base]
