"""``lorastory ui``: the whole pipeline in a browser (Gradio Blocks over :mod:`lorastory.ui.actions`).

Tabs: Data (import, recipe, per-op table, kept/dropped galleries, export),
Train (form with presets, background job, loss plot, samples), Story (panels
table, consistent-character mode, generate, storyboard, regenerate a panel, zip), Gallery / Eval
(earlier runs with their PNG parameters, manifests and scores).

The app reads and serves only its workspace: Gradio's upload/cache folder is
put inside it, ``allowed_paths`` is the workspace alone, and every path a
user gives goes through :class:`~lorastory.ui.workspace.Workspace` first.
"""

from __future__ import annotations

import html
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorastory.errors import LorastoryError
from lorastory.ui import actions
from lorastory.ui.jobs import RUNNING, JobQueue
from lorastory.ui.workspace import Workspace

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
AUTH_ENV = "LORASTORY_UI_AUTH"
SAMPLERS = ["Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ 2M SDE", "DDIM", "UniPC", "Heun"]
CONSISTENCY_MODES = [("none: panels independent", "none"), ("attention: panels share self-attention", "attention"),
                     ("reference: one reference image (IP-Adapter)", "reference"), ("both", "both")]
CSS = """
.mono textarea { font-family: ui-monospace, 'Noto Sans Mono CJK SC', monospace !important; font-size: 13px !important; }
.status { min-height: 1.5em; }
"""
_CJK_FONTS = "'Noto Sans CJK SC', 'Noto Sans SC', 'WenQuanYi Micro Hei', 'Microsoft YaHei', 'PingFang SC', sans-serif"


class UiError(LorastoryError):
    """A problem with what was entered in the app."""


@dataclass
class AppContext:
    """What every handler shares: the workspace and the job queue."""

    ws: Workspace
    jobs: JobQueue


def check_bind(host: str, auth: str | None) -> tuple[str, str] | None:
    """The (user, password) pair for ``auth``; binding beyond this machine without one is refused."""
    auth = auth or os.environ.get(AUTH_ENV) or None
    pair = None
    if auth:
        user, sep, password = auth.partition(":")
        if not sep or not user or not password:
            raise UiError("--auth must be USER:PASSWORD (both non-empty)")
        pair = (user, password)
    if host not in LOCAL_HOSTS and pair is None:
        raise UiError(
            f"binding to {host} makes the app reachable from other machines; pass --auth USER:PASSWORD "
            f"(or set {AUTH_ENV}) to require a login, or keep the default --host 127.0.0.1"
        )
    return pair


def _ok(text: str) -> str:
    return f"**Done:** {text}"


def _err(err: Exception) -> str:
    if isinstance(err, LorastoryError):
        return f"**Error:** {err}"
    return f"**Error:** {type(err).__name__}: {err}"


def _md_list(items: list[dict[str, str]], limit: int = 20) -> str:
    lines = [f"- `{html.escape(i.get('item') or i.get('file', ''))}`: {html.escape(i['reason'])}" for i in items[:limit]]
    if len(items) > limit:
        lines.append(f"- ... and {len(items) - limit} more")
    return "\n".join(lines)


def create_app(workspace: str | os.PathLike[str], jobs: JobQueue | None = None, build_default_model: bool = True) -> Any:
    """Build the Blocks app over ``workspace`` (created if needed)."""
    ws = Workspace(workspace)
    # Uploads and Gradio's file cache live inside the workspace, like everything else the app touches.
    os.environ["GRADIO_TEMP_DIR"] = str(ws.root / ".gradio")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr
    import pandas as pd

    if build_default_model:
        actions.ensure_default_model(ws)
    ctx = AppContext(ws, jobs or JobQueue())
    upload_root = os.environ["GRADIO_TEMP_DIR"]
    theme = gr.themes.Soft(font=[_CJK_FONTS], font_mono=["ui-monospace", "Noto Sans Mono CJK SC", "monospace"])

    with gr.Blocks(title="lorastory") as demo:
        demo.lorastory = ctx  # for tests and the launcher
        demo.lorastory_theme = theme
        gr.Markdown(f"# lorastory\nWorkspace: `{ws.root}` — every path below is inside it.")
        seen = gr.State({})

        # ------------------------------------------------------------------ Data
        with gr.Tab("Data", id="data"):
            gr.Markdown("### 1. Import images\nFrom a folder inside the workspace (same-name `.txt` captions, "
                        "or `metadata.jsonl`/`.csv`), or upload images / a `.zip`.")
            with gr.Row():
                with gr.Column():
                    folder = gr.Textbox(label="Folder inside the workspace", placeholder="e.g. incoming/photos",
                                        elem_id="import-folder")
                    import_folder_btn = gr.Button("Import folder", elem_id="import-folder-btn")
                with gr.Column():
                    upload = gr.File(label="Upload images, captions (.txt) or a .zip", file_count="multiple",
                                     file_types=["image", ".txt", ".zip"], elem_id="upload")
                    import_upload_btn = gr.Button("Import upload", elem_id="import-upload-btn")
            with gr.Row():
                ds_name = gr.Textbox(label="Dataset name", value="my-data", elem_id="dataset-name")
                ds_caption = gr.Textbox(label="Caption for every image (empty: use .txt captions)", value="二次元")
                ds_replace = gr.Checkbox(label="Replace an existing dataset of that name", value=True)
            import_status = gr.Markdown(elem_id="import-status", elem_classes="status")

            gr.Markdown("### 2. Curate with a Data-Juicer recipe")
            with gr.Row():
                ds_pick = gr.Dropdown(label="Dataset", choices=actions.dataset_choices(ws), allow_custom_value=True,
                                      elem_id="dataset-pick")
                recipe_name = gr.Textbox(label="Recipe / result name", value="curated", elem_id="recipe-name")
                use_ds_btn = gr.Button("Use this dataset in the recipe")
            with gr.Row():
                with gr.Column(scale=3):
                    recipe_text = gr.Textbox(label="Recipe (Data-Juicer YAML; paths are workspace paths)",
                                             value=actions.default_recipe(None), lines=18, max_lines=40,
                                             elem_id="recipe-yaml", elem_classes="mono")
                with gr.Column(scale=2):
                    op_names = sorted(_registered_ops())
                    op_pick = gr.Dropdown(label="Operator", choices=op_names, value=op_names[0] if op_names else None)
                    op_table = gr.Dataframe(headers=["parameter", "type", "default"], interactive=False,
                                            value=actions.op_rows(op_names[0]) if op_names else None, label="Parameters")
                    op_params = gr.Textbox(label="Its parameters (YAML)", lines=5, elem_classes="mono",
                                           value=_yaml(actions.op_defaults(op_names[0])) if op_names else "")
                    add_op_btn = gr.Button("Add operator to the recipe")
            with gr.Row():
                processes = gr.Number(label="Worker processes", value=1, precision=0, minimum=1)
                run_recipe_btn = gr.Button("Run recipe", variant="primary", elem_id="run-recipe-btn")
            recipe_status = gr.Markdown(elem_id="recipe-status", elem_classes="status")
            op_counts = gr.Dataframe(headers=["op", "in", "kept", "dropped", "errors", "seconds"], interactive=False,
                                     label="Per-op table", elem_id="op-table")
            with gr.Row():
                kept_gallery = gr.Gallery(label="Kept", columns=6, height=260, elem_id="kept-gallery")
                dropped_gallery = gr.Gallery(label="Dropped (op: reason)", columns=6, height=260, object_fit="contain", elem_id="dropped-gallery")
            skipped_md = gr.Markdown()
            with gr.Accordion("Report: stats histograms and dropped samples", open=False):
                report_html = gr.HTML()
            gr.Markdown("### 3. Export for training (`metadata.csv` + images)")
            with gr.Row():
                export_src = gr.Dropdown(label="Recipe result", choices=actions.curated_choices(ws), allow_custom_value=True,
                                         elem_id="export-src")
                export_name = gr.Textbox(label="Training folder name", value="my-style")
                export_btn = gr.Button("Export", elem_id="export-btn")
            export_status = gr.Markdown(elem_id="export-status")

        # ------------------------------------------------------------------ Train
        preset_names = list(actions.PRESETS)
        first = actions.PRESETS[preset_names[0]]
        with gr.Tab("Train", id="train"):
            with gr.Row():
                preset = gr.Dropdown(label="Preset", choices=preset_names, value=preset_names[0], elem_id="preset")
                t_model = gr.Dropdown(label="Model", choices=actions.model_choices(ws), value=actions.DEFAULT_MODEL,
                                      allow_custom_value=True)
                t_data = gr.Dropdown(label="Training folder", choices=actions.train_folder_choices(ws),
                                     allow_custom_value=True, elem_id="train-data")
                t_name = gr.Textbox(label="Run name", value="style-lora", elem_id="run-name")
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
            with gr.Row():
                ckpt_every = gr.Number(label="checkpoint every (steps, 0: off)", value=0, precision=0)
                val_every = gr.Number(label="samples every (steps, 0: off)", value=0, precision=0)
                seed = gr.Number(label="seed", value=0, precision=0)
                resume = gr.Checkbox(label="resume from the newest checkpoint", value=False)
            val_prompts = gr.Textbox(label="Validation prompts (one per line)", lines=2, value="二次元，一个女孩")
            with gr.Row():
                train_btn = gr.Button("Start training", variant="primary", elem_id="train-btn")
                stop_train_btn = gr.Button("Stop", variant="stop", elem_id="stop-train-btn")
            train_status = gr.Markdown(elem_id="train-status", elem_classes="status")
            with gr.Row():
                loss_plot = gr.LinePlot(x="step", y="loss", title="Training loss", height=260, elem_id="loss-plot")
                samples = gr.Gallery(label="Validation samples", columns=4, height=260)
            train_log = gr.Textbox(label="Log", lines=6, max_lines=12, interactive=False, elem_classes="mono")
            queue_md = gr.Markdown(elem_id="queue")

        # ------------------------------------------------------------------ Story
        with gr.Tab("Story", id="story"):
            with gr.Row():
                example = gr.Dropdown(label="Start from an example", choices=_example_stories(), value=None)
                load_example_btn = gr.Button("Load example")
            with gr.Row():
                s_title = gr.Textbox(label="Title", elem_id="story-title")
                s_character = gr.Textbox(label="Character (before every prompt)", elem_id="story-character")
                s_style = gr.Textbox(label="Style (after every prompt)", elem_id="story-style")
            s_negative = gr.Textbox(label="Negative prompt", value="")
            with gr.Row():
                s_steps = gr.Number(label="steps", value=50, precision=0, elem_id="story-steps")
                s_cfg = gr.Number(label="cfg", value=4.0)
                s_width = gr.Number(label="width", value=1024, precision=0, elem_id="story-width")
                s_height = gr.Number(label="height", value=1024, precision=0, elem_id="story-height")
                s_seed = gr.Number(label="seed", value=0, precision=0)
                s_sampler = gr.Dropdown(label="sampler", choices=SAMPLERS, value="Euler")
            with gr.Row():
                s_consistency = gr.Dropdown(label="Consistent character", choices=CONSISTENCY_MODES, value="none",
                                            elem_id="story-consistency")
                s_strength = gr.Slider(label="consistency strength", minimum=0, maximum=1, step=0.05, value=1.0,
                                       elem_id="story-consistency-strength")
                s_reference = gr.Textbox(label="Reference image (workspace path; empty: generated)", value="",
                                         elem_id="story-reference")
                s_ip_adapter = gr.Dropdown(label="IP-Adapter (folder in models/ or hub id; empty: the model's default)",
                                           choices=[""] + actions.ip_adapter_choices(ws), value="", allow_custom_value=True,
                                           elem_id="story-ip-adapter")
            panels = gr.Dataframe(headers=actions.STORY_COLUMNS, datatype=["str", "str", "number", "str"],
                                  value=[["", "", None, ""], ["", "", None, ""]], interactive=True,
                                  column_count=4, label="Panels (prompt, caption, seed: empty = story seed + n - 1)",
                                  elem_id="panels")
            with gr.Row():
                add_panel_btn = gr.Button("Add panel")
                remove_panel_btn = gr.Button("Remove last panel")
                move_from = gr.Number(label="move panel", value=2, precision=0, minimum=1)
                move_to = gr.Number(label="to position", value=1, precision=0, minimum=1)
                move_btn = gr.Button("Move")
            with gr.Row():
                s_model = gr.Dropdown(label="Model", choices=actions.model_choices(ws), value=actions.DEFAULT_MODEL,
                                      allow_custom_value=True)
                s_lora = gr.Dropdown(label="LoRA (optional)", choices=[""] + actions.lora_choices(ws), value="",
                                     allow_custom_value=True)
                s_scale = gr.Slider(label="LoRA scale", minimum=0, maximum=2, step=0.05, value=0.8)
                s_name = gr.Textbox(label="Run name", value="my-story", elem_id="story-name")
            with gr.Row():
                gen_btn = gr.Button("Generate story", variant="primary", elem_id="generate-btn")
                stop_story_btn = gr.Button("Stop", variant="stop")
            story_status = gr.Markdown(elem_id="story-status", elem_classes="status")
            storyboard = gr.Image(label="Storyboard", type="filepath", interactive=False, elem_id="storyboard", height=360)
            story_panels = gr.Gallery(label="Panels", columns=4, height=220, object_fit="contain")
            with gr.Row():
                regen_index = gr.Number(label="Regenerate panel", value=1, precision=0, minimum=1)
                regen_seed = gr.Textbox(label="with seed (empty: random)", value="")
                regen_btn = gr.Button("Regenerate panel", elem_id="regen-btn")
                zip_btn = gr.Button("Make zip (panels, storyboard, manifest)", elem_id="zip-btn")
            story_zip = gr.File(label="Download", interactive=False, elem_id="story-zip", height=80)
            current_run = gr.State(None)
            with gr.Accordion("Story YAML", open=False):
                story_yaml = gr.Textbox(lines=10, elem_classes="mono", label="story.yaml (read-only view of the form)",
                                        interactive=False)

        # ------------------------------------------------------------------ Gallery / Eval
        with gr.Tab("Gallery / Eval", id="gallery"):
            with gr.Row():
                g_run = gr.Dropdown(label="Story run", choices=actions.story_runs(ws), allow_custom_value=True,
                                    elem_id="gallery-run")
                g_refresh = gr.Button("Refresh lists")
            g_board = gr.Image(label="Storyboard", type="filepath", interactive=False, height=360)
            g_panels = gr.Gallery(label="Panels", columns=4, height=220, object_fit="contain")
            g_params = gr.Dataframe(headers=actions.PARAM_COLUMNS, interactive=False,
                                    label="Parameters read from each PNG", elem_id="gallery-params")
            with gr.Row():
                g_manifest = gr.JSON(label="manifest.json")
                g_scores = gr.JSON(label="scores.json")
            gr.Markdown("### Score a run")
            with gr.Row():
                clips = actions.clip_choices(ws)
                g_clip = gr.Dropdown(label="CLIP model (folder in models/)", choices=clips, allow_custom_value=True,
                                     value=actions.DEFAULT_CLIP if actions.DEFAULT_CLIP in clips else None)
                g_compare = gr.Checkbox(label="LoRA on/off comparison", value=False)
                g_eval_btn = gr.Button("Score run")
            eval_status = gr.Markdown(elem_id="eval-status")
            gr.Markdown("### Training runs")
            with gr.Row():
                g_train_run = gr.Dropdown(label="Training run", choices=actions.train_runs(ws), allow_custom_value=True)
                g_train_cfg = gr.Textbox(label="config.yaml", lines=8, interactive=False, elem_classes="mono")
            g_train_samples = gr.Gallery(label="Samples", columns=6, height=200)

        timer = gr.Timer(1.0)

        # ================================================================== handlers: Data

        def refresh_data_lists():
            return (gr.update(choices=actions.dataset_choices(ws)), gr.update(choices=actions.curated_choices(ws)),
                    gr.update(choices=actions.train_folder_choices(ws)))

        def import_result(result: dict[str, Any]) -> str:
            text = _ok(f"imported {result['written']} image(s) into `{result['dataset']}`")
            if result.get("upload"):
                text += f" (upload stored in `{result['upload']}`)"
            problems = result.get("refused", []) + result["skipped"]
            if problems:
                text += f"\n\n{len(problems)} left out:\n" + _md_list(problems)
            return text

        def on_import_folder(path, name, caption, replace):
            try:
                result = actions.import_folder(ws, path, name, caption, replace)
            except Exception as err:
                return (_err(err), gr.skip(), gr.skip(), gr.skip())
            dataset = f"{result['dataset']}/metadata.jsonl"
            return (import_result(result), gr.update(choices=actions.dataset_choices(ws), value=dataset),
                    *refresh_data_lists()[1:])

        def on_import_upload(files, name, caption, replace):
            try:
                paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in (files or [])]
                result = actions.import_upload(ws, paths, upload_root, name, caption, replace)
            except Exception as err:
                return (_err(err), gr.skip(), gr.skip(), gr.skip())
            dataset = f"{result['dataset']}/metadata.jsonl"
            return (import_result(result), gr.update(choices=actions.dataset_choices(ws), value=dataset),
                    *refresh_data_lists()[1:])

        data_lists = [ds_pick, export_src, t_data]
        import_folder_btn.click(on_import_folder, [folder, ds_name, ds_caption, ds_replace], [import_status, *data_lists])
        import_upload_btn.click(on_import_upload, [upload, ds_name, ds_caption, ds_replace], [import_status, *data_lists])

        def on_use_dataset(text, dataset, name):
            if not dataset:
                return gr.skip()
            return actions.point_recipe(text, dataset, f"curated/{name or 'curated'}/result.jsonl")

        use_ds_btn.click(on_use_dataset, [recipe_text, ds_pick, recipe_name], recipe_text)

        def on_op(name):
            return actions.op_rows(name), _yaml(actions.op_defaults(name))

        op_pick.change(on_op, op_pick, [op_table, op_params])

        def on_add_op(text, name, params):
            try:
                return actions.add_op(text, name, params), ""
            except Exception as err:
                return gr.skip(), _err(err)

        add_op_btn.click(on_add_op, [recipe_text, op_pick, op_params], [recipe_text, recipe_status])

        def on_run_recipe(text, name, procs, progress=gr.Progress()):
            try:
                progress(0, desc="reading the dataset")
                report = actions.run_recipe_text(ws, text, name, int(procs or 1),
                                                 on_progress=lambda done, total: progress(done / max(total, 1), desc=f"{done}/{total} rows"))
            except Exception as err:
                return (_err(err), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip())
            table = [[r["op"], r["in"], r["kept"], r["dropped"], r["errors"], r["seconds"]] for r in report["ops"]]
            status = _ok(f"{report['samples_in']} in → {report['samples_out']} kept, {report['skipped']} skipped "
                         f"(`{ws.rel(report['export'])}`, {report['seconds']:.2f} s)")
            notes = []
            if report["unknown_recipe_keys"]:
                notes.append(f"unknown recipe keys (typos?): {', '.join(report['unknown_recipe_keys'])}")
            if report["ignored_recipe_keys"]:
                notes.append(f"Data-Juicer engine keys with no effect here: {', '.join(report['ignored_recipe_keys'])}")
            if notes:
                status += "\n\n" + "\n".join(f"- {n}" for n in notes)
            skipped = ""
            if report["dropped_examples"]:
                skipped += "**Dropped (examples):**\n" + _md_list(
                    [{"item": f"line {e['line']}", "reason": f"{e['op']}: {e['why']}"} for e in report["dropped_examples"]]) + "\n\n"
            if report["skipped_rows"]:
                skipped += "**Skipped rows (not filter decisions):**\n" + _md_list(
                    [{"item": f"line {r['line']} ({r['stage']})", "reason": r["reason"]} for r in report["skipped_rows"]])
            page = Path(report["report_html"]).read_text(encoding="utf-8")
            frame = (f'<iframe title="report" style="width:100%;height:560px;border:0" '
                     f'srcdoc="{html.escape(page, quote=True)}"></iframe>')
            return (status, table, actions.kept_samples(ws, report["export"]), actions.dropped_samples(ws, report),
                    skipped, frame, gr.update(choices=actions.curated_choices(ws), value=ws.rel(report["export"])))

        run_recipe_btn.click(on_run_recipe, [recipe_text, recipe_name, processes],
                             [recipe_status, op_counts, kept_gallery, dropped_gallery, skipped_md, report_html, export_src])

        def on_export(src, name):
            try:
                result = actions.export_for_training(ws, src, name, replace=True)
            except Exception as err:
                return _err(err), gr.skip()
            text = _ok(f"{result['written']} image(s) in `{result['train_folder']}`")
            if result["skipped"]:
                text += "\n\n" + _md_list(result["skipped"])
            return text, gr.update(choices=actions.train_folder_choices(ws), value=result["train_folder"])

        export_btn.click(on_export, [export_src, export_name], [export_status, t_data])

        # ================================================================== handlers: Train

        train_inputs = [rank, alpha, resolution, epochs, max_steps, batch_size, grad_acc, lr, center_crop, random_flip,
                        buckets, grad_ckpt, precision, optimizer, train_te]

        def on_preset(name):
            values = actions.PRESETS[name]
            return [values[k] for k in actions.TRAIN_FIELDS]

        preset.change(on_preset, preset, train_inputs)

        def on_train(model, data, name, *values):
            *form_values, ckpt, val_ev, seed_value, resume_value, prompts = values
            form = dict(zip(actions.TRAIN_FIELDS, form_values))
            form.update(checkpoint_every=ckpt or 0, validation_every=val_ev or 0, seed=seed_value or 0,
                        resume=bool(resume_value), validation_prompts=prompts)
            try:
                config = actions.train_config(ws, model, data, name, form)
                job = ctx.jobs.submit("train", f"train {name}", actions.train_job(ws, config))
            except Exception as err:
                return _err(err)
            return f"**Queued:** {job.summary()}"

        train_btn.click(on_train, [t_model, t_data, t_name, *train_inputs, ckpt_every, val_every, seed, resume, val_prompts],
                        train_status)

        def stop_latest(kind):
            def stop():
                job = ctx.jobs.latest(kind)
                if job is None or not job.active:
                    return "nothing running"
                ctx.jobs.cancel(job.id)
                return f"**Stopping:** {ctx.jobs.get(job.id).summary()}"
            return stop

        stop_train_btn.click(stop_latest("train"), None, train_status)

        # ================================================================== handlers: Story

        def form_story(title, character, style, negative, steps, cfg, width, height, seed_value, sampler, rows,
                       mode, strength, reference, ip_adapter):
            defaults = {"steps": steps, "cfg": cfg, "width": width, "height": height, "seed": seed_value, "sampler": sampler}
            consistency = actions.consistency_from_form(ws, mode, strength, reference, ip_adapter)
            return actions.story_from_form(title, character, style, negative, _rows(rows), defaults, consistency)

        story_inputs = [s_title, s_character, s_style, s_negative, s_steps, s_cfg, s_width, s_height, s_seed, s_sampler, panels,
                        s_consistency, s_strength, s_reference, s_ip_adapter]

        def on_generate(*values):
            *story_values, model, lora, scale, name = values
            try:
                story = form_story(*story_values)
                job = ctx.jobs.submit("story", f"story {name}", actions.story_job(ws, story, model, lora or None, float(scale), name))
            except Exception as err:
                return _err(err), gr.skip()
            return f"**Queued:** {job.summary()}", story.to_yaml()

        gen_btn.click(on_generate, [*story_inputs, s_model, s_lora, s_scale, s_name], [story_status, story_yaml])
        stop_story_btn.click(stop_latest("story"), None, story_status)

        def on_load_example(name):
            if not name:
                return [gr.skip()] * len(story_inputs)
            from lorastory.demo import EXAMPLES
            from lorastory.generate.story import load_story

            story = load_story(EXAMPLES / name)
            d, c = story.defaults, story.consistency
            return (story.title, story.character, story.style, story.negative, d.steps, d.cfg, d.width, d.height,
                    d.seed, d.sampler, actions.story_rows(story), c.mode, c.strength, c.reference_image or "",
                    c.ip_adapter or "")

        load_example_btn.click(on_load_example, example, story_inputs)

        def on_add_panel(rows):
            return _rows(rows) + [["", "", None, ""]]

        def on_remove_panel(rows):
            rows = _rows(rows)
            return rows[:-1] if len(rows) > 1 else rows

        def on_move(rows, src, dst):
            rows = _rows(rows)
            src, dst = int(src or 1) - 1, int(dst or 1) - 1
            if 0 <= src < len(rows) and 0 <= dst < len(rows):
                rows.insert(dst, rows.pop(src))
            return rows

        add_panel_btn.click(on_add_panel, panels, panels)
        remove_panel_btn.click(on_remove_panel, panels, panels)
        move_btn.click(on_move, [panels, move_from, move_to], panels)

        def on_regenerate(run, index, seed_value):
            if not run:
                return "**Error:** generate a story first (or pick one in Gallery / Eval)"
            try:
                new_seed = int(str(seed_value).strip()) if str(seed_value or "").strip() else random.randrange(2**31)
            except ValueError:
                return f"**Error:** seed '{seed_value}' is not a whole number"
            try:
                job = ctx.jobs.submit("story", f"panel {int(index)} of {ws.rel(run)}",
                                      actions.regenerate_job(ws, run, int(index), new_seed))
            except Exception as err:
                return _err(err)
            return f"**Queued:** {job.summary()} (seed {new_seed})"

        regen_btn.click(on_regenerate, [current_run, regen_index, regen_seed], story_status)

        def on_zip(run):
            if not run:
                return "**Error:** generate a story first", gr.skip()
            try:
                path = actions.story_zip(ws, run)
            except Exception as err:
                return _err(err), gr.skip()
            return _ok(f"`{ws.rel(path)}` is ready"), str(path)

        zip_btn.click(on_zip, current_run, [story_status, story_zip])

        # ================================================================== handlers: Gallery

        def on_gallery_run(run):
            if not run:
                return [gr.skip()] * 5
            try:
                details = actions.run_details(ws, run)
            except Exception as err:
                gr.Warning(str(err))
                return [gr.skip()] * 5
            return (details["storyboard"], details["panels"], details["rows"], details["manifest"], details["scores"])

        g_run.change(on_gallery_run, g_run, [g_board, g_panels, g_params, g_manifest, g_scores])

        def on_refresh():
            return (gr.update(choices=actions.story_runs(ws)), gr.update(choices=actions.train_runs(ws)),
                    gr.update(choices=actions.clip_choices(ws)), gr.update(choices=actions.model_choices(ws)),
                    gr.update(choices=actions.model_choices(ws)), gr.update(choices=[""] + actions.lora_choices(ws)),
                    gr.update(choices=[""] + actions.ip_adapter_choices(ws)))

        g_refresh.click(on_refresh, None, [g_run, g_train_run, g_clip, t_model, s_model, s_lora, s_ip_adapter])

        def on_train_run(run):
            if not run:
                return gr.skip(), gr.skip()
            try:
                folder = ws.resolve(run, must_exist=True)
                text = (folder / "config.yaml").read_text(encoding="utf-8")
            except Exception as err:
                return _err(err), []
            return text, actions.run_samples(ws, str(folder))

        g_train_run.change(on_train_run, g_train_run, [g_train_cfg, g_train_samples])

        def on_eval(run, clip, compare):
            try:
                job = ctx.jobs.submit("eval", f"score {run}", actions.eval_job(ws, run, clip, bool(compare)))
            except Exception as err:
                return _err(err)
            return f"**Queued:** {job.summary()}"

        g_eval_btn.click(on_eval, [g_run, g_clip, g_compare], eval_status)

        # ================================================================== polling (survives reloads)

        def poll(state):
            state = dict(state or {})
            out: list[Any] = []
            # train
            job = ctx.jobs.latest("train")
            if job is None:
                out += [gr.skip()] * 4
            else:
                key = (job.id, job.status, len(job.data.get("losses", [])), len(job.log), job.message)
                if state.get("train") == key:
                    out += [gr.skip()] * 4
                else:
                    state["train"] = key
                    steps, losses = job.data.get("steps", []), job.data.get("losses", [])
                    frame = pd.DataFrame({"step": list(steps), "loss": list(losses)})
                    status = _progress_md(job)
                    if job.status == "done" and job.result:
                        status += "\n\n" + _ok("LoRA: " + ", ".join(f"`{p}`" for p in job.result["lora"]))
                    out += [status, frame, actions.run_samples(ws, job.data.get("out")), "\n".join(job.log[-200:])]
            # story
            job = ctx.jobs.latest("story")
            if job is None:
                out += [gr.skip()] * 4
            else:
                key = (job.id, job.status, round(job.progress, 3), job.message)
                if state.get("story") == key:
                    out += [gr.skip()] * 4
                else:
                    state["story"] = key
                    if job.status == "done" and job.data.get("run"):
                        details = actions.run_details(ws, job.data["run"])
                        out += [_progress_md(job) + "\n\n" + _ok(f"`{ws.rel(details['folder'])}`"),
                                details["storyboard"], details["panels"], str(details["folder"])]
                    else:
                        out += [_progress_md(job), gr.skip(), gr.skip(), gr.skip()]
            # eval
            job = ctx.jobs.latest("eval")
            if job is None or state.get("eval") == (job.id, job.status, job.message):
                out.append(gr.skip())
            else:
                state["eval"] = (job.id, job.status, job.message)
                text = _progress_md(job)
                if job.status == "done" and job.result:
                    text += "\n\n```json\n" + json.dumps(job.result.get("summary"), ensure_ascii=False, indent=2) + "\n```"
                out.append(text)
            # queue
            active = [j for j in ctx.jobs.jobs() if j.active]
            queue_key = tuple((j.id, j.status) for j in active)
            if state.get("queue") == queue_key:
                out.append(gr.skip())
            else:
                state["queue"] = queue_key
                out.append("**Jobs:** " + ("; ".join(j.summary() for j in active) if active else "none running"))
            return [state, *out]

        poll_outputs = [seen, train_status, loss_plot, samples, train_log, story_status, storyboard, story_panels,
                        current_run, eval_status, queue_md]
        timer.tick(poll, seen, poll_outputs, show_progress="hidden")
        demo.load(poll, seen, poll_outputs, show_progress="hidden")
        demo.load(lambda: refresh_data_lists(), None, data_lists)

    return demo


def _progress_md(job: Any) -> str:
    # Plain words, not emoji: a machine without an emoji font shows those as boxes.
    icon = {"running": "**Running:**", "queued": "**Queued:**", "done": "**Done:**", "failed": "**Failed:**",
            "cancelled": "**Cancelled:**"}.get(job.status, "")
    bar = ""
    if job.status == RUNNING:
        width = int(job.progress * 100)
        bar = (f'\n\n<div style="background:#e5e7eb;border-radius:4px;height:10px;width:100%">'
               f'<div style="background:#6366f1;height:10px;border-radius:4px;width:{width}%"></div></div>')
    return f"{icon} {html.escape(job.summary())}{bar}"


def _rows(value: Any) -> list[list[Any]]:
    """Dataframe value (pandas, list or dict) as a list of rows."""
    if value is None:
        return []
    if hasattr(value, "values") and hasattr(value, "columns"):
        return [list(r) for r in value.astype(object).where(value.notna(), None).values.tolist()]
    if isinstance(value, dict):
        return [list(r) for r in value.get("data", [])]
    return [list(r) for r in value]


def _yaml(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False, default_flow_style=False)


def _registered_ops() -> list[str]:
    from lorastory.data.ops import registered_ops

    return list(registered_ops())


def _example_stories() -> list[str]:
    from lorastory.demo import EXAMPLES

    return sorted(p.name for p in EXAMPLES.glob("story_*.yaml"))


def launch(
    workspace: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 7860,
    auth: str | None = None,
    block: bool = True,
    quiet: bool = False,
) -> Any:
    """Check the bind address, build the app and serve it; return the Blocks (``block=False`` for tests)."""
    pair = check_bind(host, auth)
    demo = create_app(workspace)
    ws = demo.lorastory.ws
    demo.queue(default_concurrency_limit=4)
    demo.launch(
        server_name=host,
        server_port=port,
        auth=pair,
        allowed_paths=[str(ws.root)],
        prevent_thread_lock=not block,
        quiet=quiet,
        show_error=True,
        theme=demo.lorastory_theme,
        css=CSS,
        footer_links=[],
        ssr_mode=False,
        mcp_server=False,
        max_file_size=f"{2 * 1024}mb",
    )
    return demo
