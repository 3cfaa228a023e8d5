"""lorastory: from a folder of images to an illustrated story in a trained style."""

__version__ = "0.1.0"
