"""Captioners: models that write a caption or tags for a picture (the caption stage's models).

``loader.load_captioner`` picks the backend from the model folder; ``base`` holds
the interface, ``img2seq`` (BLIP, BLIP-2, Florence-2), ``vlm`` (Qwen2.5-VL),
``wd14`` (booru tagger through onnxruntime) and ``toy`` (the toy world's own
captioner) the backends, ``tiny`` the random test models.
"""
