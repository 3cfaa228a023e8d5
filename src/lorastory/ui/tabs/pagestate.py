"""What a page shows that must not depend on when the server started or the page was loaded.

- Lists: every dropdown of models, LoRAs, datasets, runs, recipes and stories is read again when
  the page loads, when its tab is shown, and after each job ends (a LoRA just trained appears in
  the Story tab at once; no "Refresh lists" needed).
- Form values and the selected runs are remembered per workspace (:class:`~lorastory.ui.formstore.FormStore`)
  on every change and put back when the page loads; while a training job runs, the Train form shows
  that job's settings, not whatever was last typed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lorastory.errors import LorastoryError
from lorastory.ui import actions
from lorastory.ui.actions.families import model_picker
from lorastory.ui.defaults import preset_choices, preset_values, recipe_choices
from lorastory.ui.formstore import FormStore
from lorastory.ui.presets import CAPTION_FIELDS, TRAIN_FIELDS
from lorastory.ui.tabs.common import AppContext, Clock

# The Story tab's form (StoryTab.story_inputs), in its order.
STORY_KEYS = ("title", "character", "style", "negative", "steps", "cfg", "width", "height", "seed", "sampler", "panels",
              "mode", "strength", "reference", "ip_adapter", "separator", "true_cfg")
# The Train tab's form after model/data/name and the preset fields (TrainTab.on_train's inputs), in its order.
TRAIN_EXTRA_KEYS = ("checkpoint_every", "validation_every", "seed", "resume", "validation_prompts")


def train_form_keys() -> list[str]:
    """Keys of the Train tab's inputs in the order ``TrainTab.on_train`` receives them."""
    return [f"train.{k}" for k in ("model", "data", "name", *TRAIN_FIELDS, *TRAIN_EXTRA_KEYS, *CAPTION_FIELDS)]


class PageState:
    """Registers the lists and remembered fields of the built tabs, then wires the page's events."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx, self.ws = ctx, ctx.ws
        self.store = FormStore(ctx.ws.root)
        self.fields: list[tuple[str, Any]] = []  # (key, component) remembered
        self.lists: list[tuple[Any, Callable[[], list[Any]]]] = []  # (dropdown, its choices now)
        self.tabs: list[Any] = []

    def remember(self, key: str, component: Any) -> None:
        self.fields.append((key, component))

    def listing(self, component: Any, choices: Callable[[], list[Any]]) -> None:
        self.lists.append((component, choices))

    # ------------------------------------------------------------------ the app's tabs

    def add_tabs(self, data: Any, train: Any, story: Any, gallery: Any) -> None:
        """The lists and fields of the four tabs (attributes their builders keep)."""
        ws = self.ws
        for tab in (data, train, story, gallery):
            if getattr(tab, "tab", None) is not None:
                self.tabs.append(tab.tab)
        self.listing(data.ds_pick, lambda: actions.dataset_choices(ws))
        self.listing(data.export_src, lambda: actions.curated_choices(ws))
        self.listing(data.caption.dataset, lambda: actions.dataset_choices(ws))
        self.listing(data.caption.model, lambda: actions.captioner_choices(ws))
        self.listing(train.model, lambda: model_picker(ws))
        self.listing(train.data, lambda: actions.train_folder_choices(ws))
        self.listing(story.model, lambda: model_picker(ws))
        self.listing(story.lora, lambda: [""] + actions.lora_choices(ws))
        self.listing(story.ip_adapter, lambda: [""] + actions.ip_adapter_choices(ws))
        self.listing(gallery.run, lambda: actions.story_runs(ws))
        self.listing(gallery.train_run, lambda: actions.train_runs(ws))
        self.listing(gallery.clip, lambda: actions.clip_choices(ws))
        self.listing(train.preset, lambda: preset_choices(ws))  # saved presets included
        self.listing(data.loader.choice, lambda: recipe_choices(ws))
        for name in ("folder", "ds_name", "ds_caption", "ds_replace", "ds_uncaptioned", "ds_pick", "recipe_name",
                     "recipe_text", "processes", "export_src", "export_name"):
            self.remember(f"data.{name}", getattr(data, name))
        self.remember("data.caption_dataset", data.caption.dataset)
        self.remember("train.preset", train.preset)
        train_inputs = [train.model, train.data, train.name, *train.preset_inputs, train.ckpt_every, train.val_every,
                        train.seed, train.resume, train.val_prompts, *train.caption_inputs]
        for key, component in zip(train_form_keys(), train_inputs):
            self.remember(key, component)
        for key, component in zip(STORY_KEYS, story.story_inputs):
            self.remember(f"story.{key}", component)
        for name in ("model", "lora", "scale", "name", "example", "current_run", "base_dtype", "offload"):
            self.remember(f"story.{name}", getattr(story, name))
        for name in ("run", "train_run", "clip", "compare"):
            self.remember(f"gallery.{name}", getattr(gallery, name))
        self._preset = train.preset

    # ------------------------------------------------------------------ events

    def wire(self, clock: Clock) -> None:
        import gradio as gr

        for key, component in self.fields:
            component.change(self._saver(key), component, None, queue=False, show_progress="hidden",
                             trigger_mode="always_last", api_visibility="undocumented")
        # A preset sets its fields without a change of theirs being typed: remember them with it.
        self._preset.input(self._remember_preset, self._preset, None, queue=False, show_progress="hidden",
                           api_visibility="undocumented")
        restored = list(dict.fromkeys([c for _, c in self.fields] + [c for c, _ in self.lists]))
        clock.demo.load(lambda: self.restore(restored), None, restored, show_progress="hidden")
        listed = [c for c, _ in self.lists]
        for tab in self.tabs:
            tab.select(self.refresh_lists, None, listed, show_progress="hidden", api_visibility="undocumented")
        seen = gr.State(None)
        clock.poll(self.after_jobs, seen, [seen, *listed], on_load=False)  # the load above fills the lists

    def _remember_preset(self, choice: str) -> None:
        try:  # a shipped preset or a saved one ("saved: NAME")
            values = preset_values(self.ws, choice)
        except LorastoryError:
            return  # the Train tab says why; nothing to remember
        self.store.update({f"train.{key}": values[key] for key in TRAIN_FIELDS if key in values})

    def _saver(self, key: str) -> Callable[[Any], None]:
        def save(value: Any) -> None:
            self.store.update({key: value})
        return save

    def restore(self, components: list[Any]) -> list[Any]:
        """Each component's remembered value (the running training's settings first) and fresh choices."""
        import gradio as gr

        values = {**self.store.load(), **self.running_train_form()}
        keys = {id(c): k for k, c in self.fields}
        choices = {id(c): fn for c, fn in self.lists}
        updates = []
        for component in components:
            change: dict[str, Any] = {}
            if id(component) in choices:
                change["choices"] = choices[id(component)]()
            key = keys.get(id(component))
            if key is not None and key in values and _allowed(component, values[key], change.get("choices")):
                change["value"] = values[key]
            if isinstance(component, gr.State):
                updates.append(change.get("value", gr.skip()) if "value" in change else gr.skip())
            else:
                updates.append(gr.update(**change) if change else gr.skip())
        return updates

    def running_train_form(self) -> dict[str, Any]:
        """The form of the queued or running training job, if any: what the Train tab must show."""
        job = self.ctx.jobs.latest("train")
        if job is None or not job.active:
            return {}
        return dict(job.data.get("form") or {})

    def refresh_lists(self) -> list[Any]:
        import gradio as gr

        return [gr.update(choices=fn()) for _, fn in self.lists]

    def after_jobs(self, seen: Any) -> list[Any]:
        """Fresh lists once a job has ended since the last look (each tick of the page's timer)."""
        import gradio as gr

        finished = [j.id for j in self.ctx.jobs.jobs() if not j.active]
        mark = (max(finished, default=0), len(finished))
        if seen is not None and tuple(seen) == mark:
            return [seen, *[gr.skip()] * len(self.lists)]
        return [list(mark), *self.refresh_lists()]


def _allowed(component: Any, value: Any, choices: list[Any] | None) -> bool:
    """Whether a remembered value can be put back: a fixed list (a preset renamed since) must still hold it."""
    if getattr(component, "allow_custom_value", True) or not hasattr(component, "choices"):
        return True
    offered = {c[1] if isinstance(c, (tuple, list)) else c for c in (choices if choices is not None else component.choices)}
    wanted = value if isinstance(value, list) else [value]
    return all(v in offered for v in wanted if v not in (None, ""))
