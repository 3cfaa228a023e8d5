"""``lorastory ui``: the whole pipeline in a browser (Gradio Blocks over :mod:`lorastory.ui.actions`).

Tabs: Data (import, recipe, per-op table, kept/dropped galleries, export),
Train (form with presets, background job, loss plot, samples), Story (panels
table, consistent-character mode, generate, storyboard, regenerate a panel, zip), Gallery / Eval
(earlier runs with their PNG parameters, manifests and scores). Each tab is built, wired and
polled by its own module in :mod:`lorastory.ui.tabs`; this module assembles them and serves the app.

The app reads and serves only its workspace: Gradio's upload/cache folder is
put inside it, ``allowed_paths`` is the workspace alone, and every path a
user gives goes through :class:`~lorastory.ui.workspace.Workspace` first.
"""

from __future__ import annotations

import os
from typing import Any

from lorastory.errors import LorastoryError
from lorastory.ui import actions
from lorastory.ui.jobs import JobQueue
from lorastory.ui.tabs.common import AppContext, Clock
from lorastory.ui.tabs.data import DataTab
from lorastory.ui.tabs.gallery import GalleryTab
from lorastory.ui.tabs.pagestate import PageState
from lorastory.ui.tabs.pnginfo import PngInfoTab
from lorastory.ui.tabs.queue import QueuePanel
from lorastory.ui.tabs.story import StoryTab
from lorastory.ui.tabs.train import TrainTab
from lorastory.ui.workspace import Workspace

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
AUTH_ENV = "LORASTORY_UI_AUTH"
CSS = """
.mono textarea { font-family: ui-monospace, 'Noto Sans Mono CJK SC', monospace !important; font-size: 13px !important; }
.status { min-height: 1.5em; }
#dropped-gallery .caption-label, #xy-grid .caption-label, .wrap-labels .caption-label,
#dropped-gallery .caption, #xy-grid .caption, .wrap-labels .caption {
  white-space: normal !important; overflow: visible !important; text-overflow: clip !important; max-width: 100% !important;
  overflow-wrap: anywhere !important; }
"""
_CJK_FONTS = "'Noto Sans CJK SC', 'Noto Sans SC', 'WenQuanYi Micro Hei', 'Microsoft YaHei', 'PingFang SC', sans-serif"


class UiError(LorastoryError):
    """A problem with what was entered in the app."""


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


def create_app(workspace: str | os.PathLike[str], jobs: JobQueue | None = None, build_default_model: bool = True) -> Any:
    """Build the Blocks app over ``workspace`` (created if needed)."""
    ws = Workspace(workspace)
    # Uploads and Gradio's file cache live inside the workspace, like everything else the app touches.
    os.environ["GRADIO_TEMP_DIR"] = str(ws.root / ".gradio")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    # Gradio is imported only now (the tabs import it as they build): it reads GRADIO_TEMP_DIR once, at import.
    import gradio as gr

    if build_default_model:
        actions.ensure_default_model(ws)
    ctx = AppContext(ws, jobs or JobQueue(), upload_root=os.environ["GRADIO_TEMP_DIR"])
    theme = gr.themes.Soft(font=[_CJK_FONTS], font_mono=["ui-monospace", "Noto Sans Mono CJK SC", "monospace"])

    with gr.Blocks(title="lorastory") as demo:
        demo.lorastory = ctx  # for tests and the launcher
        demo.lorastory_theme = theme
        gr.Markdown(f"# lorastory\nWorkspace: `{ws.root}` — every path below is inside it.")
        queue = QueuePanel(ctx)  # above the tabs: visible on every one
        data, train, story, gallery = DataTab(ctx), TrainTab(ctx), StoryTab(ctx), GalleryTab(ctx)
        pnginfo = PngInfoTab(ctx)
        # One timer for the whole page; each tab polls its own jobs on it (and on a page load).
        clock = Clock(demo, gr.Timer(1.0))
        data.wire(clock, train_folder=train.data)
        train.wire(clock)
        story.wire(clock)
        gallery.wire(clock, train_model=train.model, story_model=story.model, story_lora=story.lora,
                     story_ip_adapter=story.ip_adapter)
        pnginfo.wire(story)
        queue.wire(clock)
        # Lists read on load, on each tab shown and after each job; form values remembered per workspace.
        page = PageState(ctx)
        page.add_tabs(data, train, story, gallery)
        page.wire(clock)
        clock.start()
        demo.lorastory_page = page
        demo.lorastory_tabs = {"data": data, "train": train, "story": story, "gallery": gallery, "queue": queue}
    return demo


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
    if actions.go_offline_without_network():
        print("no network: the Hugging Face libraries run offline (a hub id must be downloaded already)")
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
