"""The Data tab: import images, curate with a Data-Juicer recipe (run as a queued job with progress
and Stop; per-op table, kept/dropped galleries, report once done), export a training folder."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from lorastory.data.ops import registered_ops
from lorastory.ui import actions
from lorastory.ui.actions.recipe_text import add_op_keeping_comments, nothing_kept_note
from lorastory.ui.defaults import app_defaults, recipe_text
from lorastory.ui.jobs import DONE
from lorastory.ui.tabs.caption import CaptionStep
from lorastory.ui.tabs.recipes import RecipeLoader
from lorastory.ui.tabs.common import Clock, Tab, err, md_list, ok, progress_md, stop_latest, unseen_job, yaml_text


class DataTab(Tab):
    """The Data tab's components (built in the order they appear) and its handlers."""

    label, tab_id = "Data", "data"

    def build(self) -> None:
        self._build_import()
        self.caption = CaptionStep(self.ctx)
        self._build_recipe()
        self._build_results()
        self._build_export()

    # ------------------------------------------------------------------ layout

    def _build_import(self) -> None:
        import gradio as gr

        gr.Markdown("### 1. Import images\nFrom a folder inside the workspace (same-name `.txt` captions, "
                    "or `metadata.jsonl`/`.csv`), or upload images / a `.zip`.")
        with gr.Row():
            with gr.Column():
                self.folder = gr.Textbox(label="Folder inside the workspace", placeholder="e.g. incoming/photos",
                                         elem_id="import-folder")
                self.import_folder_btn = gr.Button("Import folder", elem_id="import-folder-btn")
            with gr.Column():
                self.upload = gr.File(label="Upload images, captions (.txt) or a .zip", file_count="multiple",
                                      file_types=["image", ".txt", ".zip"], elem_id="upload")
                self.import_upload_btn = gr.Button("Import upload", elem_id="import-upload-btn")
        with gr.Row():
            self.ds_name = gr.Textbox(label="Dataset name", value="my-data", elem_id="dataset-name")
            self.ds_caption = gr.Textbox(label="Fallback caption (only for pictures without a .txt caption)", value="",
                                         info="Captions from files always win; this fills in the pictures that have none.",
                                         elem_id="dataset-caption")
            self.ds_replace = gr.Checkbox(label="Replace an existing dataset of that name", value=True)
            self.ds_uncaptioned = gr.Checkbox(label="Keep pictures without a caption (for the Caption step)", value=False,
                                              elem_id="dataset-uncaptioned")
        self.import_status = gr.Markdown(elem_id="import-status", elem_classes="status")

    def _build_recipe(self) -> None:
        import gradio as gr

        gr.Markdown("### 2. Curate with a Data-Juicer recipe")
        with gr.Row():
            self.ds_pick = gr.Dropdown(label="Dataset", choices=actions.dataset_choices(self.ws), allow_custom_value=True,
                                       elem_id="dataset-pick")
            self.recipe_name = gr.Textbox(label="Recipe / result name", value="curated", elem_id="recipe-name")
            self.use_ds_btn = gr.Button("Use this dataset in the recipe")
        self.loader = RecipeLoader(self.ctx)
        with gr.Row():
            with gr.Column(scale=3):
                self.recipe_text = gr.Textbox(label="Recipe (Data-Juicer YAML; paths are workspace paths)",
                                              value=recipe_text(self.ws, app_defaults(self.ws).recipe, None),
                                              lines=18, max_lines=40,
                                              elem_id="recipe-yaml", elem_classes="mono")
            with gr.Column(scale=2):
                op_names = sorted(registered_ops())
                first = op_names[0] if op_names else None
                self.op_pick = gr.Dropdown(label="Operator", choices=op_names, value=first)
                self.op_table = gr.Dataframe(headers=["parameter", "type", "default"], interactive=False,
                                             value=actions.op_rows(first) if first else None, label="Parameters")
                self.op_params = gr.Textbox(label="Its parameters (YAML)", lines=5, elem_classes="mono",
                                            value=yaml_text(actions.op_defaults(first)) if first else "")
                self.add_op_btn = gr.Button("Add operator to the recipe")
        with gr.Row():
            # 0 (an emptied field is sent as 0): the recipe's own np decides.
            self.processes = gr.Number(label="Worker processes (0: the recipe's np)", value=0, precision=0,
                                       minimum=0, elem_id="recipe-processes")
            self.run_recipe_btn = gr.Button("Run recipe", variant="primary", elem_id="run-recipe-btn")
            self.stop_recipe_btn = gr.Button("Stop", variant="stop", elem_id="recipe-stop-btn")
        self.recipe_status = gr.Markdown(elem_id="recipe-status", elem_classes="status")

    def _build_results(self) -> None:
        import gradio as gr

        self.op_counts = gr.Dataframe(headers=["op", "in", "kept", "dropped", "errors", "seconds"], interactive=False,
                                      label="Per-op table", elem_id="op-table")
        with gr.Row():
            self.kept_gallery = gr.Gallery(label="Kept", columns=6, height=260, elem_id="kept-gallery")
            self.dropped_gallery = gr.Gallery(label="Dropped (op: reason)", columns=6, height=260, object_fit="contain",
                                              elem_id="dropped-gallery")
        self.skipped_md = gr.Markdown()
        with gr.Accordion("Report: stats histograms and dropped samples", open=False):
            self.report_html = gr.HTML()

    def _build_export(self) -> None:
        import gradio as gr

        gr.Markdown("### 3. Export for training (`metadata.csv` + images)")
        with gr.Row():
            self.export_src = gr.Dropdown(label="Recipe result", choices=actions.curated_choices(self.ws),
                                          allow_custom_value=True, elem_id="export-src")
            self.export_name = gr.Textbox(label="Training folder name", value="my-style")
            self.export_btn = gr.Button("Export", elem_id="export-btn")
        self.export_status = gr.Markdown(elem_id="export-status")

    # ------------------------------------------------------------------ events

    def wire(self, clock: Clock, train_folder: Any) -> None:
        """Wire the tab's events; ``train_folder`` is the Train tab's dropdown an export selects."""
        import gradio as gr

        self.train_folder = train_folder
        data_lists = [self.ds_pick, self.export_src, train_folder]
        import_inputs = [self.ds_name, self.ds_caption, self.ds_replace, self.ds_uncaptioned]
        caption_lists = [self.caption.dataset, self.caption.model]
        self.import_folder_btn.click(self.on_import_folder, [self.folder, *import_inputs], [self.import_status, *data_lists]
                                     ).then(self.caption.refresh, None, caption_lists)
        self.import_upload_btn.click(self.on_import_upload, [self.upload, *import_inputs], [self.import_status, *data_lists]
                                     ).then(self.caption.refresh, None, caption_lists)
        self.caption.wire(clock)
        self.loader.wire(self.recipe_text, self.ds_pick, self.recipe_name)
        self.use_ds_btn.click(self.on_use_dataset, [self.recipe_text, self.ds_pick, self.recipe_name], self.recipe_text)
        self.op_pick.change(self.on_op, self.op_pick, [self.op_table, self.op_params])
        self.add_op_btn.click(self.on_add_op, [self.recipe_text, self.op_pick, self.op_params],
                              [self.recipe_text, self.recipe_status])
        self.run_recipe_btn.click(self.on_run_recipe, [self.recipe_text, self.recipe_name, self.processes], self.recipe_status)
        self.stop_recipe_btn.click(stop_latest(self.ctx, "recipe"), None, self.recipe_status, queue=False)  # not behind the polls
        seen = gr.State({})
        clock.poll(self.poll_recipe, seen, [seen, self.recipe_status, *self.result_views()])
        self.export_btn.click(self.on_export, [self.export_src, self.export_name], [self.export_status, train_folder])
        clock.demo.load(self.refresh_data_lists, None, data_lists)
        clock.demo.load(self.caption.refresh, None, caption_lists)

    def refresh_data_lists(self) -> tuple[Any, Any, Any]:
        import gradio as gr

        ws = self.ws
        return (gr.update(choices=actions.dataset_choices(ws)), gr.update(choices=actions.curated_choices(ws)),
                gr.update(choices=actions.train_folder_choices(ws)))

    def on_import_folder(self, path, name, caption, replace, uncaptioned):
        import gradio as gr

        try:
            result = actions.import_folder(self.ws, path, name, caption, replace, bool(uncaptioned))
        except Exception as error:
            return (err(error), gr.skip(), gr.skip(), gr.skip())
        return self._imported(result)

    def on_import_upload(self, files, name, caption, replace, uncaptioned):
        import gradio as gr

        try:
            paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in (files or [])]
            result = actions.import_upload(self.ws, paths, self.ctx.upload_root, name, caption, replace, bool(uncaptioned))
        except Exception as error:
            return (err(error), gr.skip(), gr.skip(), gr.skip())
        return self._imported(result)

    def _imported(self, result: dict[str, Any]) -> tuple[Any, ...]:
        import gradio as gr

        dataset = f"{result['dataset']}/metadata.jsonl"
        return (import_message(result), gr.update(choices=actions.dataset_choices(self.ws), value=dataset),
                *self.refresh_data_lists()[1:])

    def on_use_dataset(self, text, dataset, name):
        import gradio as gr

        if not dataset:
            return gr.skip()
        return actions.point_recipe(text, dataset, f"curated/{name or 'curated'}/result.jsonl")

    def on_op(self, name):
        return actions.op_rows(name), yaml_text(actions.op_defaults(name))

    def on_add_op(self, text, name, params):
        import gradio as gr

        try:
            text, note = add_op_keeping_comments(text, name, params)
            return text, (f"**Note:** {note}" if note else ok(f"added {name} at the end of `process`"))
        except Exception as error:
            return gr.skip(), err(error)

    def result_views(self) -> list[Any]:
        """What a finished recipe job fills, in :meth:`recipe_views`' order."""
        return [self.op_counts, self.kept_gallery, self.dropped_gallery, self.skipped_md, self.report_html, self.export_src]

    def on_run_recipe(self, text, name, procs):
        """Queue the recipe (checked first: a bad one is refused here, in one line); the poll shows the rest."""
        try:
            processes = int(procs) if procs else None
            plan = actions.plan_recipe(self.ws, text, name, processes)
            # An identical run already queued is refused; so is a second job writing the same result.
            job = self.ctx.jobs.submit("recipe", f"recipe {name}", actions.recipe_job(self.ws, plan),
                                       key=self.ws.rel(plan.export), fingerprint=actions.recipe_fingerprint(text, processes))
        except Exception as error:
            return err(error)
        return f"**Queued:** {job.summary()}"

    def poll_recipe(self, state: dict[str, Any]) -> list[Any]:
        """The newest recipe job's progress; once done its status line, op table, galleries and report."""
        import gradio as gr

        state = dict(state or {})
        job = unseen_job(self.ctx.jobs, state, "recipe")
        views = [gr.skip()] * len(self.result_views())
        if job is None:
            return [state, gr.skip(), *views]
        if job.status == DONE and job.result:
            try:
                return [state, recipe_message(self.ws, job.result), *self.recipe_views(job.result)]
            except Exception as error:  # the result was removed since: say so instead of failing every tick
                return [state, err(error), *views]
        return [state, progress_md(job), *views]

    def recipe_views(self, report: dict[str, Any]) -> list[Any]:
        """The op table, kept and dropped galleries, skipped rows, report frame and export choice of a run."""
        import gradio as gr

        ws = self.ws
        table = [[r["op"], r["in"], r["kept"], r["dropped"], r["errors"], r["seconds"]] for r in report["ops"]]
        page = Path(report["report_html"]).read_text(encoding="utf-8")
        frame = (f'<iframe title="report" style="width:100%;height:560px;border:0" '
                 f'srcdoc="{html.escape(page, quote=True)}"></iframe>')
        return [table, actions.kept_samples(ws, report["export"]), actions.dropped_samples(ws, report),
                skipped_message(report), frame, gr.update(choices=actions.curated_choices(ws), value=ws.rel(report["export"]))]

    def on_export(self, src, name):
        import gradio as gr

        try:
            result = actions.export_for_training(self.ws, src, name, replace=True)
        except Exception as error:
            return err(error), gr.skip()
        text = ok(f"{result['written']} image(s) in `{result['train_folder']}`")
        if result["skipped"]:
            text += "\n\n" + md_list(result["skipped"])
        return text, gr.update(choices=actions.train_folder_choices(self.ws), value=result["train_folder"])


def import_message(result: dict[str, Any]) -> str:
    text = ok(f"imported {result['written']} image(s) into `{result['dataset']}`")
    if result.get("upload"):
        text += f" (upload stored in `{result['upload']}`)"
    if "captions_from_files" in result:
        text += (f"; captions: {result['captions_from_files']} from files, "
                 f"{result['captions_from_fallback']} from the fallback caption")
    problems = result.get("refused", []) + result["skipped"]
    if problems:
        text += f"\n\n{len(problems)} left out:\n" + md_list(problems)
    return text


def recipe_message(ws: Any, report: dict[str, Any]) -> str:
    """The status line of a recipe run, with notes on recipe keys that had no effect."""
    status = ok(f"{report['samples_in']} in → {report['samples_out']} kept, {report['skipped']} skipped "
                f"(`{ws.rel(report['export'])}`, {report['seconds']:.2f} s)")
    notes = [f"warning: {w}" for w in report.get("warnings", [])]
    empty = nothing_kept_note(report)
    if empty:
        status += f"\n\n**Warning:** {empty}"
    if report["unknown_recipe_keys"]:
        notes.append(f"unknown recipe keys (typos?): {', '.join(report['unknown_recipe_keys'])}")
    if report["ignored_recipe_keys"]:
        notes.append(f"Data-Juicer engine keys with no effect here: {', '.join(report['ignored_recipe_keys'])}")
    if notes:
        status += "\n\n" + "\n".join(f"- {n}" for n in notes)
    return status


def skipped_message(report: dict[str, Any]) -> str:
    """The dropped examples and the skipped rows of a recipe run, as Markdown lists."""
    skipped = ""
    if report["dropped_examples"]:
        skipped += "**Dropped (examples):**\n" + md_list(
            [{"item": f"line {e['line']}", "reason": f"{e['op']}: {e['why']}"} for e in report["dropped_examples"]]) + "\n\n"
    if report["skipped_rows"]:
        skipped += "**Skipped rows (not filter decisions):**\n" + md_list(
            [{"item": f"line {r['line']} ({r['stage']})", "reason": r["reason"]} for r in report["skipped_rows"]])
    return skipped
