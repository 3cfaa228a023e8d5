"""The web app (``lorastory ui``): Gradio over the same library functions the CLI calls."""
