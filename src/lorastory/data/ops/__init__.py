"""Data-Juicer-compatible operators, one per file, registered by name on import.

A new operator is one new module here that subclasses :class:`Filter`,
:class:`Mapper` or :class:`Deduplicator`, decorates itself with :func:`register_op`, and is
imported below.
"""

from lorastory.data.ops import (  # noqa: F401  (imported to register)
    image_aesthetics_filter,
    image_aspect_ratio_filter,
    image_captioning_mapper,
    image_deduplicator,
    image_shape_filter,
    image_size_filter,
    image_tagging_mapper,
    image_text_similarity_filter,
    text_length_filter,
    words_num_filter,
)
from lorastory.data.ops.base import (
    Deduplicator,
    Filter,
    Mapper,
    Op,
    OpParams,
    OpSetupError,
    build_op,
    register_op,
    registered_ops,
)

__all__ = ["Deduplicator", "Filter", "Mapper", "Op", "OpParams", "OpSetupError", "build_op", "register_op", "registered_ops"]
