"""``clean_ip_mapper``: remove IPv4 and (full, uncompressed) IPv6 addresses from the text, as Data-Juicer does."""

from __future__ import annotations

from lorastory.data.ops.base import register_op
from lorastory.data.ops.clean_links_mapper import CleanLinksMapper

_OCTET = r"(?:(?:1[0-9][0-9])|(?:2[0-4][0-9])|(?:25[0-5])|(?:[1-9][0-9])|(?:[0-9]))"
_OCTET_DOT = r"(?:(?:1[0-9][0-9]\.)|(?:2[0-4][0-9]\.)|(?:25[0-5]\.)|(?:[1-9][0-9]\.)|(?:[0-9]\.))"
# Data-Juicer's default (no word boundaries: the digits of "1234.5.6.7" match from "234").
IP_PATTERN = _OCTET_DOT + "{3}" + _OCTET + r"|([\da-fA-F]{1,4}:){7}[\da-fA-F]{1,4}"


@register_op("clean_ip_mapper")
class CleanIpMapper(CleanLinksMapper):
    """Every match of ``pattern`` (default: IP addresses) becomes ``repl``."""

    default_pattern = IP_PATTERN
