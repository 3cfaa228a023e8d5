"""Data-Juicer-compatible operators, one per file, registered by name on import.

A new operator is one new module here that subclasses :class:`Filter`,
:class:`Mapper`, :class:`Deduplicator` (exact hash, first copy stays) or
:class:`DatasetOp` (decided over all rows: near-dedup, selectors), decorates
itself with :func:`register_op`, and is imported below.
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

# text mappers and filters (issue 19)
from lorastory.data.ops import (  # noqa: F401  (imported to register)
    alphanumeric_filter,
    average_line_length_filter,
    character_repetition_filter,
    chinese_convert_mapper,
    clean_copyright_mapper,
    clean_email_mapper,
    clean_html_mapper,
    clean_ip_mapper,
    clean_links_mapper,
    fix_unicode_mapper,
    flagged_words_filter,
    general_field_filter,
    maximum_line_length_filter,
    punctuation_normalization_mapper,
    remove_bibliography_mapper,
    remove_comments_mapper,
    remove_header_mapper,
    remove_long_words_mapper,
    remove_non_chinese_character_mapper,
    remove_repeat_sentences_mapper,
    remove_specific_chars_mapper,
    remove_table_text_mapper,
    remove_words_with_incorrect_substrings_mapper,
    replace_content_mapper,
    sentence_split_mapper,
    special_characters_filter,
    specified_field_filter,
    specified_numeric_field_filter,
    stopwords_filter,
    suffix_filter,
    token_num_filter,
    whitespace_normalization_mapper,
    word_repetition_filter,
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
    RangeParams,
    TextMapper,
)

__all__ = ["DatasetOp", "Deduplicator", "Filter", "Mapper", "Op", "OpParams", "OpSetupError", "RangeParams", "TextMapper",
           "build_op", "op_summary", "register_op", "registered_ops"]
