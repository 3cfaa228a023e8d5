"""Data-Juicer-compatible operators, one per file, registered by name on import.

A new operator is one new module here that subclasses :class:`Filter`,
:class:`Mapper`, :class:`Deduplicator` (exact hash, first copy stays) or
:class:`DatasetOp` (decided over all rows: near-dedup, selectors), decorates
itself with :func:`register_op`, and is imported below.
"""

from lorastory.data.ops import (  # noqa: F401  (imported to register)
    image_aesthetics_filter,
    image_aspect_ratio_filter,
    image_deduplicator,
    image_shape_filter,
    image_size_filter,
    image_text_similarity_filter,
    text_length_filter,
    words_num_filter,
)

# dedup, image ops, selectors (issue 19)
from lorastory.data.ops import (  # noqa: F401  (imported to register)
    document_deduplicator,
    document_line_deduplicator,
    document_minhash_deduplicator,
    document_simhash_deduplicator,
    frequency_specified_field_selector,
    image_blur_mapper,
    image_face_blur_mapper,
    image_face_count_filter,
    image_face_ratio_filter,
    image_nsfw_filter,
    image_pair_similarity_filter,
    image_subplot_filter,
    image_text_matching_filter,
    image_watermark_filter,
    random_selector,
    range_specified_field_selector,
    ray_bts_minhash_cpp_deduplicator,
    ray_bts_minhash_deduplicator,
    ray_document_deduplicator,
    ray_image_deduplicator,
    tags_specified_field_selector,
    topk_specified_field_selector,
)
from lorastory.data.ops.dataset_op import DatasetOp
from lorastory.data.ops.base import (
    Deduplicator,
    Filter,
    Mapper,
    Op,
    OpParams,
    OpSetupError,
    build_op,
    op_summary,
    register_op,
    registered_ops,
)

__all__ = ["DatasetOp", "Deduplicator", "Filter", "Mapper", "Op", "OpParams", "OpSetupError", "build_op", "op_summary", "register_op", "registered_ops"]
