"""The generate stage: story panels, their PNG parameters, and storyboards.

Its verbs, the Python API the README documents::

    from lorastory.generate import generate_story, load_story

    result = generate_story(load_story("story.yaml"), model="models/toy-kolors", out="stories/toy")

Modules: :mod:`~lorastory.generate.story` (a story file rendered into a run folder),
:mod:`~lorastory.generate.pngmeta` (A1111-style ``parameters`` text chunk),
:mod:`~lorastory.generate.fonts` (a CJK-capable font for captions),
:mod:`~lorastory.generate.grid` (panels pasted into a captioned storyboard).
Heavy libraries (torch, diffusers) load only when a story renders.
"""

from lorastory.generate.regenerate import regenerate_panel
from lorastory.generate.story import StoryResult, generate_story
from lorastory.generate.story_file import Story, load_story

__all__ = ["Story", "StoryResult", "generate_story", "load_story", "regenerate_panel"]
