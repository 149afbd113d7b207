"""Decoding untrusted image uploads with limits and clear errors."""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from cliprs.errors import InvalidInput, TooLarge


def decode_image(data: bytes, max_bytes: int, max_side: int) -> Image.Image:
    """An RGB image from uploaded bytes, or `InvalidInput` / `TooLarge` saying what is wrong."""
    if not data:
        raise InvalidInput("the upload is empty; send a PNG, JPEG or WebP image")
    if len(data) > max_bytes:
        raise TooLarge(f"the image is {len(data)} bytes; the limit is {max_bytes} bytes")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if max(im.size) > max_side:
                raise TooLarge(
                    f"the image is {im.size[0]}x{im.size[1]} px; the limit is {max_side} px a side"
                )
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise InvalidInput("the upload is not a readable image; send a PNG, JPEG or WebP file") from None
    except Image.DecompressionBombError:
        raise TooLarge("the image has too many pixels") from None
