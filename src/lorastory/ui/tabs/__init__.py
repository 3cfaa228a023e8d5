"""The web app's tabs, one builder each: Data, Train, Story, Gallery / Eval.

Each tab module lays out its components (``build``), wires its own events and its own poll
(``wire``). Importing a tab module imports Gradio, which reads ``GRADIO_TEMP_DIR`` once at import:
:func:`lorastory.ui.app.create_app` sets it to the workspace first, then imports the tabs.
"""
