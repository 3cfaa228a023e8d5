"""The generate stage: story panels, their PNG parameters, and storyboards.

Modules: :mod:`~lorastory.generate.pngmeta` (A1111-style ``parameters`` text
chunk), :mod:`~lorastory.generate.fonts` (a CJK-capable font for captions),
:mod:`~lorastory.generate.grid` (panels pasted into a captioned storyboard).
Nothing is imported here, so importing one module stays light.
"""
