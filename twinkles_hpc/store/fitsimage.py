"""A FITS primary image (one HDU: header, then the pixels) written without astropy.

The header cards are formatted exactly as astropy.io.fits formats them (fixed format, values in columns
11-30: strings quoted, padded to 8 characters and left-justified, numbers right-justified, floats as
Python's shortest repr with an upper-case E, cut to 20 characters), so the file is byte for byte the one
`fits.PrimaryHDU(data, header).writeto()` writes; tests/test_startup.py compares the two. Cards taken from
an existing header string (a WCS from `SensorWCS.header_string()`) are copied verbatim, as astropy copies
cards it has parsed. Importing astropy.io.fits costs a process about 0.2 s; a worker that only writes an
image need not pay it.

Limits (a ValueError, never a silently different file): a string value must fit on one card (no CONTINUE
cards; a comment that does not fit is cut, as astropy cuts it), a float must be finite, a keyword at most 8
characters, each keyword given once, and the pixels float32 or float64.
"""
import math

import numpy as np

from twinkles_hpc.store.atomic import atomic_write_parts

CARD = 80
BLOCK = 2880
#: BITPIX of each pixel type written.
BITPIX = {np.dtype(np.float32): -32, np.dtype(np.float64): -64}
#: Rows converted to big-endian at a time, so that the copy stays small.
_ROWS_PER_PART = 256


def _value(value):
    """The value field of a card, as astropy.io.fits writes it."""
    if isinstance(value, str):
        if value == "":
            return "''"
        quoted = "'" + f"{value.replace(chr(39), chr(39) * 2):8}" + "'"
        return f"{quoted:20}"
    if isinstance(value, (bool, np.bool_)):
        return f"{'T' if value else 'F':>20}"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):>20d}"
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise ValueError(f"FITS header values must be finite, got {value!r}")
        text = str(value).replace("e", "E")
        if len(text) > 20:
            e = text.find("E")
            text = text[:20] if e < 0 else text[:20 - (len(text) - e)] + text[e:]
        return f"{text:>20}"
    raise ValueError(f"FITS header values must be str, bool, int or float, got {type(value).__name__}")


def card(keyword, value, comment=None):
    """One 80-character card `KEYWORD = value / comment`."""
    keyword = str(keyword).upper()
    if not 0 < len(keyword) <= 8:
        raise ValueError(f"FITS keyword {keyword!r} must have 1 to 8 characters")
    text = f"{keyword:8}= {_value(value)}"
    if len(text) > CARD:
        raise ValueError(f"FITS card {keyword}: the value does not fit in {CARD} characters: {text!r}")
    text += f" / {comment}" if comment else ""
    return f"{text[:CARD]:{CARD}}"          # a comment too long is cut, as astropy cuts it


def cards_of(header):
    """The cards of a header string (80-character cards up to END), verbatim; blank cards are skipped."""
    out = []
    for i in range(0, len(header), CARD):
        c = header[i:i + CARD]
        if c[:8].rstrip() == "END":
            break
        if c.strip():
            out.append(f"{c:{CARD}}")
    return out


def header_bytes(data, cards):
    """The primary header of `data` (SIMPLE, BITPIX, NAXIS, NAXISn first) followed by `cards`, padded."""
    try:
        bitpix = BITPIX[data.dtype.newbyteorder("=")]
    except KeyError:
        raise ValueError(f"FITS images are written from float32 or float64 pixels, got {data.dtype}") from None
    head = [card("SIMPLE", True, "conforms to FITS standard"), card("BITPIX", bitpix, "array data type"),
            card("NAXIS", data.ndim, "number of array dimensions")]
    head += [card(f"NAXIS{i + 1}", n) for i, n in enumerate(reversed(data.shape))]
    seen = set()
    for c in head + list(cards):
        key = c[:8].rstrip()
        if key in seen:
            raise ValueError(f"FITS keyword {key} given twice")
        seen.add(key)
    text = "".join(head) + "".join(cards) + f"{'END':{CARD}}"
    text += " " * (-len(text) % BLOCK)
    return text.encode("ascii")


def image_parts(data, cards):
    """The bytes of the file, in parts: the header, the pixels big-endian a few rows at a time (in one
    buffer: a part is valid until the next one is asked for), the zero padding of the last block."""
    data = np.asarray(data)
    yield header_bytes(data, cards)
    rows = data.reshape(data.shape[0], -1) if data.ndim > 1 else data.reshape(1, -1)
    buf = np.empty((min(_ROWS_PER_PART, rows.shape[0]), rows.shape[1]), data.dtype.newbyteorder(">"))
    for i in range(0, rows.shape[0], _ROWS_PER_PART):
        part = buf[:min(_ROWS_PER_PART, rows.shape[0] - i)]
        np.copyto(part, rows[i:i + len(part)])
        yield part.data
    yield bytes(-data.nbytes % BLOCK)


def write_image(path, data, cards):
    """Write `data` (float32 or float64, any number of axes) as the primary HDU of the FITS file `path`,
    atomically, with the header `cards` (from `card` and `cards_of`) after the mandatory ones."""
    atomic_write_parts(path, image_parts(data, cards))
