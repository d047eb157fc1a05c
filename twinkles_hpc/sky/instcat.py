"""PhoSim 3.4/3.5 instance catalogues: read, validate and write (format: docs/instcat.md).

A catalogue is a header of `key value` lines (the visit: pointing, MJD, filter, rotation, seeing, ...)
and `object` lines (one source each), with `includeobj FILE` lines pulling in more object lines.
Every problem in a file is an InputError naming the file, the line, the field and what was expected.
"""
import gzip
import math
import os
import uuid
import zlib
from dataclasses import dataclass

import numpy as np

from twinkles_hpc.errors import InputError
from twinkles_hpc.instrument import BANDS

INSTCAT_OBJECT_DTYPE = np.dtype([
    ("id", "i8"), ("ra", "f8"), ("dec", "f8"), ("mag_norm", "f8"), ("sed", "U64"), ("redshift", "f8"),
    ("gamma1", "f8"), ("gamma2", "f8"), ("kappa", "f8"), ("dra", "f8"), ("ddec", "f8"),
    ("source_type", "U16"), ("major_arcsec", "f8"), ("minor_arcsec", "f8"), ("pa_deg", "f8"),
    ("sersic_n", "f8"), ("dust_rest", "U8"), ("av_rest", "f8"), ("rv_rest", "f8"),
    ("dust_lab", "U8"), ("av_lab", "f8"), ("rv_lab", "f8")])

#: Object-line columns after `object`, as (dtype field, name used in error messages).
_COLUMNS = [("id", "ID"), ("ra", "RA"), ("dec", "DEC"), ("mag_norm", "magNorm"), ("sed", "SEDFILE"),
            ("redshift", "redshift"), ("gamma1", "gamma1"), ("gamma2", "gamma2"), ("kappa", "kappa"),
            ("dra", "deltaRA"), ("ddec", "deltaDEC")]
#: Source types and their parameters (fields of INSTCAT_OBJECT_DTYPE, in catalogue order).
SOURCE_PARAMS = {"point": (), "sersic2d": ("major_arcsec", "minor_arcsec", "pa_deg", "sersic_n")}
_SOURCE_DOC = {"point": "no parameters",
               "sersic2d": "4 parameters: major and minor half-light radius (arcsec), position angle (deg), Sersic n"}
#: Dust models (lower-case spelling -> stored name); all but `none` take A_V and R_V.
DUST_MODELS = {"none": "none", "ccm": "CCM", "calzetti": "calzetti"}

REQUIRED_KEYS = ("rightascension", "declination", "mjd", "filter", "rotskypos")
#: Older (PhoSim 3.4 / Twinkles Run 1 era) header names -> the PhoSim 3.5 key they stand for.
ALIASES = {"unrefracted_ra_deg": "rightascension", "unrefracted_dec_deg": "declination",
           "opsim_expmjd": "mjd", "opsim_filter": "filter", "opsim_rotskypos": "rotskypos",
           "opsim_rottelpos": "rottelpos", "opsim_obshistid": "obshistid", "opsim_rawseeing": "seeing",
           "opsim_altitude": "altitude", "opsim_azimuth": "azimuth", "opsim_moonra": "moonra",
           "opsim_moondec": "moondec", "opsim_moonalt": "moonalt", "opsim_dist2moon": "dist2moon",
           "opsim_sunalt": "sunalt", "sim_seed": "seed", "sim_vistime": "vistime", "sim_nsnap": "nsnap"}
#: Allowed header values: canonical key -> (lo, hi, unit); limits inclusive except a lower limit of 0
#: for keys in _POSITIVE_KEYS (which must be > 0). Absent keys are not checked; `mjd` is any finite number.
HEADER_RANGES = {"rightascension": (-360.0, 360.0, "deg"), "declination": (-90.0, 90.0, "deg"),
                 "mjd": (-math.inf, math.inf, "days"), "rotskypos": (-360.0, 360.0, "deg"),
                 "rottelpos": (-360.0, 360.0, "deg"), "altitude": (-90.0, 90.0, "deg"),
                 "azimuth": (-360.0, 360.0, "deg"), "moonra": (-360.0, 360.0, "deg"),
                 "moondec": (-90.0, 90.0, "deg"), "moonalt": (-90.0, 90.0, "deg"),
                 "moonphase": (0.0, 100.0, "percent"), "dist2moon": (0.0, 180.0, "deg"),
                 "sunalt": (-90.0, 90.0, "deg"), "seeing": (0.0, 10.0, "arcsec"), "fwhmeff": (0.0, 10.0, "arcsec"),
                 "fwhmgeom": (0.0, 10.0, "arcsec"), "vistime": (0.0, 3600.0, "s")}
_POSITIVE_KEYS = ("seeing", "fwhmeff", "fwhmgeom", "vistime")
_INT_KEYS = {"filter": (0, 5), "nsnap": (1, None), "obshistid": (None, None), "seed": (None, None),
             "minsource": (0, None)}
#: Allowed object values: INSTCAT_OBJECT_DTYPE field -> (lo, hi, unit, lower limit excluded). MAGNORM
#: outside [-10, 100] is absurd: brighter than any night-sky source but the Moon, or a typo (1e300).
OBJECT_RANGES = {"ra": (-360.0, 360.0, "deg", False), "dec": (-90.0, 90.0, "deg", False),
                 "mag_norm": (-10.0, 100.0, "AB mag", False),
                 "dra": (-0.1, 0.1, "rad", False), "ddec": (-0.1, 0.1, "rad", False),
                 "major_arcsec": (0.0, 3600.0, "arcsec", True), "minor_arcsec": (0.0, 3600.0, "arcsec", True),
                 "pa_deg": (-360.0, 360.0, "deg", False), "sersic_n": (0.0, 10.0, "", True),
                 "av": (0.0, 10.0, "mag", False), "rv": (0.0, 10.0, "", True)}
#: Weak lensing: the magnification 1 / |(1 - kappa)^2 - gamma1^2 - gamma2^2| must lie in this range
#: (kappa = 1 without shear is singular: an infinite magnification).
MAGNIFICATION_RANGE = (1e-3, 1e3)
#: Gap between snaps in a visit, s: PhoSim's default visit is vistime 33 = 2 x 15 s + 3 s.
SNAP_GAP_S = 3.0
_DEFAULT_VISTIME, _DEFAULT_NSNAP = 33.0, 2


def _canonical(key):
    k = key.lower()
    return ALIASES.get(k, k)


def _number(text, source, field, kind=float):
    """Parse one finite number (kind float or int) or raise InputError naming the field."""
    try:
        value = kind(text)
    except ValueError:
        try:  # integers are sometimes written as 123.0
            f = float(text)
            value = int(f) if kind is int and f.is_integer() and abs(f) < 2 ** 53 else None
        except ValueError:
            value = None
    if value is None or (kind is float and not math.isfinite(value)) or (
            kind is int and not -2 ** 63 <= value < 2 ** 63):
        raise InputError(source, field, "a finite number" if kind is float else "an integer", text)
    return value


def _range_text(lo, hi, unit, lo_open):
    unit = f" {unit}" if unit else ""
    if hi == math.inf:
        return "a finite number"
    if lo_open and lo == 0:
        return f"a positive number up to {hi:g}{unit}"
    return f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}]{unit}"


def _ranged(text, source, field, lo, hi, unit="", lo_open=False):
    """Parse a finite number within [lo, hi] ((lo, hi] with lo_open) or raise InputError."""
    v = _number(text, source, field)
    if not ((lo < v if lo_open else lo <= v) and v <= hi):
        raise InputError(source, field, _range_text(lo, hi, unit, lo_open), text)
    return v


def _object_value(text, source, field, name):
    lo, hi, unit, lo_open = OBJECT_RANGES[name]
    return _ranged(text, source, field, lo, hi, unit, lo_open)


def _is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def _check_header_value(key, value, source, raw_key=None):
    """Validate the value of a known header key (key in canonical lower case); returns the number."""
    field = f"header {raw_key or key}"
    if key in HEADER_RANGES:
        lo, hi, unit = HEADER_RANGES[key]
        return _ranged(value, source, field, lo, hi, unit, lo_open=key in _POSITIVE_KEYS)
    if key in _INT_KEYS:
        lo, hi = _INT_KEYS[key]
        v = _number(value, source, field, int)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f"an integer in {lo}-{hi}" if hi is not None else f"an integer >= {lo}"
            raise InputError(source, field, rng + (" (ugrizy)" if key == "filter" else ""), value)
        return v
    return value


@dataclass
class InstanceCatalog:
    """One visit's instance catalogue.

    header: raw key -> raw value string, in file order (unknown keys kept). objects:
    INSTCAT_OBJECT_DTYPE array. The properties read the header (PhoSim 3.5 keys or their aliases).
    """
    header: dict
    objects: np.ndarray
    path: str | None = None
    #: "file:line" of each object's line (None when the objects were not read from a file).
    origins: list | None = None

    def origin(self, i):
        """Where object i was read ("file:line"), else the catalogue's path."""
        return self.origins[i] if self.origins is not None else (self.path or "<instance catalogue>")

    def _get(self, key, default=None):
        for raw, value in self.header.items():
            if _canonical(raw) == key:
                return _check_header_value(key, str(value), self.path or "<instance catalogue>", raw)
        if default is None and key in REQUIRED_KEYS:
            raise InputError(self.path or "<instance catalogue>", f"header {key}", "a required header line")
        return default

    @property
    def ra(self):
        """Pointing right ascension, deg."""
        return self._get("rightascension")

    @property
    def dec(self):
        """Pointing declination, deg."""
        return self._get("declination")

    @property
    def mjd(self):
        """Visit MJD (TAI, as the catalogue gives it), days."""
        return self._get("mjd")

    @property
    def band(self):
        """Band 'u'..'y' from the filter index 0..5."""
        return BANDS[self._get("filter")]

    @property
    def rot_sky_pos(self):
        """Sky rotation angle rotSkyPos, deg."""
        return self._get("rotskypos")

    @property
    def obshistid(self):
        """OpSim visit id, or None when absent."""
        return self._get("obshistid")

    @property
    def seed(self):
        """The simulation seed (`seed`, alias SIM_SEED), or None when absent."""
        return self._get("seed")

    @property
    def seeing_fwhm(self):
        """PSF FWHM, arcsec: FWHMgeom, else FWHMeff, else seeing; None when none is given."""
        for key in ("fwhmgeom", "fwhmeff", "seeing"):
            v = self._get(key)
            if v is not None:
                return v
        return None

    @property
    def airmass(self):
        """Airmass from the altitude (plane-parallel 1/sin(alt)); 1.0 when the altitude is absent."""
        alt = self._get("altitude")
        if alt is None:
            return 1.0
        if not 0.0 < alt <= 90.0:
            raise InputError(self.path or "<instance catalogue>", "header altitude",
                             "an altitude in (0, 90] deg", alt)
        return 1.0 / math.sin(math.radians(alt))

    @property
    def nsnap(self):
        """Number of snaps in the visit (PhoSim default 2)."""
        return self._get("nsnap", _DEFAULT_NSNAP)

    @property
    def exptime(self):
        """Open-shutter time summed over snaps, s: vistime - SNAP_GAP_S * (nsnap - 1).

        PhoSim's defaults (vistime 33, nsnap 2) give 2 x 15 s; DC2-style `vistime 30, nsnap 1` gives 30 s.
        """
        t = self._get("vistime", _DEFAULT_VISTIME) - SNAP_GAP_S * (self.nsnap - 1)
        if t <= 0:
            raise InputError(self.path or "<instance catalogue>", "header vistime",
                             f"more than {SNAP_GAP_S:g} s x (nsnap - 1) of readout gaps", t)
        return t


def _text_lines(path):
    """(line number, text) of each line of a UTF-8 file (gzip-compressed if the name ends in .gz).

    Bytes that are not UTF-8, a .gz file that is not gzip or is truncated, and an unreadable file are
    InputErrors naming the file (and the line for a bad byte).
    """
    lineno = 0
    try:
        with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise InputError(f"{path}:{lineno}", "text", "UTF-8 text",
                                     f"byte 0x{raw[e.start]:02x} at column {e.start + 1}") from None
                yield lineno, text.removeprefix("\ufeff") if lineno == 1 else text
    except (OSError, EOFError, zlib.error) as e:
        if path.endswith(".gz"):
            raise InputError(path, "gzip", "a complete gzip-compressed file (the name ends in .gz)",
                             f"{e}" + (f" (after line {lineno})" if lineno else "")) from None
        raise InputError(path, "instance catalogue", "a readable file", str(e)) from None


def _parse_dust(tokens, pos, source, which):
    """Parse a dust model at tokens[pos]; returns (name, av, rv, next position). Missing = none."""
    if pos >= len(tokens):
        return "none", 0.0, 0.0, pos
    name = DUST_MODELS.get(tokens[pos].lower())
    if name is None:
        raise InputError(source, f"object {which}", "dust model none, CCM or calzetti", tokens[pos])
    if name == "none":
        return name, 0.0, 0.0, pos + 1
    if len(tokens) < pos + 3:
        raise InputError(source, f"object {which} parameters", f"2 parameters (A_V R_V) after {tokens[pos]}",
                         " ".join(tokens[pos + 1:]))
    return (name, _object_value(tokens[pos + 1], source, f"object {which} A_V", "av"),
            _object_value(tokens[pos + 2], source, f"object {which} R_V", "rv"), pos + 3)


def _check_lensing(row, source):
    """The weak-lensing Jacobian must be invertible, with a magnification in MAGNIFICATION_RANGE."""
    k, g1, g2 = row["kappa"], row["gamma1"], row["gamma2"]
    det = (1.0 - k) * (1.0 - k) - g1 * g1 - g2 * g2
    lo, hi = MAGNIFICATION_RANGE
    magnification = 1.0 / abs(det) if det else math.inf
    if not lo <= magnification <= hi:
        raise InputError(source, "object kappa, gamma1, gamma2",
                         f"a lensing magnification 1/|(1-kappa)^2 - gamma1^2 - gamma2^2| in [{lo:g}, {hi:g}]",
                         f"kappa {k!r}, gamma1 {g1!r}, gamma2 {g2!r}")


#: _parse_common_object's checks of object columns 2-11 (after the id): (lo, hi, lower limit excluded), None for
#: the SED name; and of each source type's parameters. The same limits as _parse_object's.
_COMMON_COLUMNS = tuple(None if name == "sed" else
                        (OBJECT_RANGES[name][0], OBJECT_RANGES[name][1], OBJECT_RANGES[name][3])
                        if name in OBJECT_RANGES else (-math.inf, math.inf, False) for name, _ in _COLUMNS[1:])
_COMMON_PARAMS = {stype: tuple((OBJECT_RANGES[n][0], OBJECT_RANGES[n][1], OBJECT_RANGES[n][3]) for n in names)
                  for stype, names in SOURCE_PARAMS.items()}


def _parse_common_object(tokens):
    """The row of an object line in the common form (an integer id, every number finite and in range, no dust:
    `none none` or nothing), as _parse_object returns it; None for any other line, which _parse_object then
    parses (and names what is wrong). It takes half the time per line (bench startup's catalogue: 9,913 lines)."""
    stype = tokens[12].lower() if len(tokens) > 12 else None
    checks = _COMMON_PARAMS.get(stype)
    if checks is None:
        return None
    n = 13 + len(checks)
    if len(tokens) != n and (len(tokens) != n + 2 or tokens[n].lower() != "none" or tokens[n + 1].lower() != "none"):
        return None
    try:
        row = [int(tokens[1])]
        for tok, lim in zip(tokens[2:12] + tokens[13:n], _COMMON_COLUMNS + checks):
            if lim is None:
                row.append(tok)
                continue
            v = float(tok)
            if not ((lim[0] < v if lim[2] else lim[0] <= v) and v <= lim[1] and math.isfinite(v)):
                return None
            row.append(v)
    except ValueError:
        return None
    oid, k, g1, g2 = row[0], row[8], row[6], row[7]
    det = (1.0 - k) * (1.0 - k) - g1 * g1 - g2 * g2
    if not (-2 ** 63 <= oid < 2 ** 63 and len(row[4]) <= 64 and det
            and MAGNIFICATION_RANGE[0] <= 1.0 / abs(det) <= MAGNIFICATION_RANGE[1]):
        return None
    return (*row[:11], stype, *row[11:], *(0.0,) * (4 - len(checks)), "none", 0.0, 0.0, "none", 0.0, 0.0)


def _parse_object(tokens, source):
    """One `object` line (split into tokens) -> a tuple in INSTCAT_OBJECT_DTYPE order."""
    if len(tokens) < 13:
        raise InputError(source, "object", "at least 13 fields: object ID RA DEC MAGNORM SEDFILE REDSHIFT "
                         "GAMMA1 GAMMA2 KAPPA DELTA_RA DELTA_DEC SOURCETYPE", f"{len(tokens)} fields")
    row = {}
    for (name, label), tok in zip(_COLUMNS, tokens[1:12]):
        if name == "sed":
            if len(tok) > 64:
                raise InputError(source, "object SEDFILE", "a path of at most 64 characters", tok)
            row[name] = tok
        elif name in OBJECT_RANGES:
            row[name] = _object_value(tok, source, f"object {label}", name)
        else:
            row[name] = _number(tok, source, f"object {label}", int if name == "id" else float)
    _check_lensing(row, source)
    stype = tokens[12].lower()
    if stype not in SOURCE_PARAMS:
        raise InputError(source, "object SOURCETYPE", f"one of {', '.join(SOURCE_PARAMS)}", tokens[12])
    params = SOURCE_PARAMS[stype]
    # The source parameters are the numbers up to the first word (the dust model) or the line's end.
    rest = tokens[13:]
    given = next((i for i, t in enumerate(rest) if not _is_number(t)), len(rest))
    if given < min(len(params), len(rest)) and rest[given].lower() not in DUST_MODELS:
        _number(rest[given], source, f"object {stype} {params[given]}")  # a garbled parameter
    if given != len(params):
        raise InputError(source, f"object {stype} parameters", _SOURCE_DOC[stype], f"{given} parameters")
    pos = 13 + given
    for name, tok in zip(params, tokens[13:pos]):
        row[name] = _object_value(tok, source, f"object {stype} {name}", name)
    dust_rest, av_rest, rv_rest, pos = _parse_dust(tokens, pos, source, "DUST_REST")
    dust_lab, av_lab, rv_lab, pos = _parse_dust(tokens, pos, source, "DUST_LAB")
    if pos != len(tokens):
        raise InputError(source, "object", "nothing after the DUST_LAB model", " ".join(tokens[pos:]))
    row.update(source_type=stype, dust_rest=dust_rest, av_rest=av_rest, rv_rest=rv_rest,
               dust_lab=dust_lab, av_lab=av_lab, rv_lab=rv_lab)
    return tuple(row.get(name, 0.0) for name in INSTCAT_OBJECT_DTYPE.names)


def _read_lines(path, header, seen, rows, origins, stack):
    """Read one file (main or included) into header / rows (with origins); returns its number of lines."""
    included = len(stack) > 0
    lineno = 0
    for lineno, line in _text_lines(path):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        source = f"{path}:{lineno}"
        key = tokens[0]
        if key == "object":
            rows.append(_parse_common_object(tokens) or _parse_object(tokens, source))
            origins.append(source)
        elif key == "includeobj":
            if len(tokens) != 2:
                raise InputError(source, "includeobj", "one file name", " ".join(tokens[1:]))
            inc = os.path.join(os.path.dirname(path), tokens[1])
            if not os.path.isfile(inc):
                raise InputError(source, "includeobj", "an existing file", inc)
            if os.path.realpath(inc) in stack:
                raise InputError(source, "includeobj", "no include cycle", inc)
            _read_lines(inc, header, seen, rows, origins, stack + [os.path.realpath(path)])
        elif included:
            raise InputError(source, "line", "object or includeobj in an included file", key)
        else:
            canon = _canonical(key)
            if canon in seen:
                raise InputError(source, f"header {key}", f"one {canon} line (also at line {seen[canon]})")
            value = line.strip()[len(key):].strip()
            _check_header_value(canon, value, source, key)
            seen[canon] = lineno
            header[key] = value
    return lineno


def read_instance_catalog(path):
    """Read a PhoSim instance catalogue (plain or .gz), following includeobj lines.

    Returns an InstanceCatalog; raises InputError (file:line, field, expectation) on any bad line.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(path, "instance catalogue", "an existing file")
    header, seen, rows, origins = {}, {}, [], []
    nlines = _read_lines(path, header, seen, rows, origins, [])
    for key in REQUIRED_KEYS:
        if key not in seen:
            raise InputError(f"{path}:{nlines}", f"header {key}", "a required header line (none up to the end)")
    return InstanceCatalog(header, np.array(rows, dtype=INSTCAT_OBJECT_DTYPE), path, origins)


def _fmt(x):
    """Shortest text that parses back to the same float64 (repr)."""
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"instance catalogue values must be finite, got {x!r}")
    return repr(x)


def _object_lines(objects):
    """Text of the object lines, from column lists (row access to structured arrays is slow)."""
    cols = {name: objects[name].tolist() for name in INSTCAT_OBJECT_DTYPE.names}
    for i, oid in enumerate(cols["id"]):
        stype = str(cols["source_type"][i]).lower()
        if stype not in SOURCE_PARAMS:
            raise ValueError(f"object {oid}: unknown source_type {cols['source_type'][i]!r}")
        sed = cols["sed"][i]
        if sed.split() != [sed]:
            raise ValueError(f"object {oid}: SED file name {sed!r} is empty or has spaces")
        parts = ["object", str(oid)] + [_fmt(cols[n][i]) if n != "sed" else sed for n, _ in _COLUMNS[1:]]
        parts += [stype] + [_fmt(cols[n][i]) for n in SOURCE_PARAMS[stype]]
        for which in ("rest", "lab"):
            dust = DUST_MODELS.get(str(cols[f"dust_{which}"][i]).lower())
            if dust is None:
                raise ValueError(f"object {oid}: unknown dust_{which} {cols[f'dust_{which}'][i]!r}")
            if dust == "none":
                parts.append(dust)
            else:
                parts += [dust, _fmt(cols[f"av_{which}"][i]), _fmt(cols[f"rv_{which}"][i])]
        yield " ".join(parts)


def write_instance_catalog(path, header, objects):
    """Write a catalogue atomically (temporary file, then os.replace); .gz paths are gzipped.

    header: key -> value (str, int or float; floats written with repr). objects: an array with the
    fields of INSTCAT_OBJECT_DTYPE. Floats are written with repr, so reading back is bit-exact.
    """
    path = os.fspath(path)
    lines = []
    for key, value in header.items():
        key = str(key)
        if not key or any(c.isspace() for c in key) or key.startswith("#") or key in ("object", "includeobj"):
            raise ValueError(f"bad instance catalogue header key {key!r}")
        value = _fmt(value) if isinstance(value, float) else str(value)
        if "\n" in value or "\r" in value:
            raise ValueError(f"header {key}: value {value!r} spans lines")
        lines.append(f"{key} {value}".rstrip())
    objects = np.asarray(objects)
    missing = set(INSTCAT_OBJECT_DTYPE.names) - set(objects.dtype.names or ())
    if missing:
        raise ValueError(f"objects lack the fields {sorted(missing)} of INSTCAT_OBJECT_DTYPE")
    lines += _object_lines(objects.ravel())
    tmp = f"{path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with (gzip.open(tmp, "wt", compresslevel=6, encoding="utf-8") if path.endswith(".gz")
              else open(tmp, "w", encoding="utf-8")) as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
