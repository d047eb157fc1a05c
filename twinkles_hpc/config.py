"""Typed, documented run configuration read from TOML.

Every field has a type, a unit, a default and a one-line doc (`twinkles-hpc config --defaults` prints
them all). Unknown sections or keys, wrong types and impossible values raise `InputError` naming the
file, the key and what was expected.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field, fields

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from twinkles_hpc import instrument, options
from twinkles_hpc.errors import InputError
from twinkles_hpc.options import opt


@dataclass
class RunSection:
    name: str = opt("twinkles", "", "Name of the campaign, recorded in every output file.")
    seed: int = opt(20161, "", "Run seed: every random number is keyed by (seed, object/visit id, stage).",
                    lo=0, hi=2**62)


@dataclass
class CadenceSection:
    source: str = opt("synthetic", "",
                      "'synthetic' (embedded ten-year DDF cadence) or a path to an OpSim CSV/SQLite "
                      "file, relative to the config file.")
    field_id: int = opt(instrument.FIELD_ID, "",
                        "OpSim fieldID to select (old schema); -1 selects by distance from ra/dec.",
                        lo=-1)
    ra: float = opt(instrument.FIELD_RA, "deg", "Pointing right ascension (ECDFS DDF).", lo=0.0, hi=360.0)
    dec: float = opt(instrument.FIELD_DEC, "deg", "Pointing declination.", lo=-90.0, hi=90.0)
    select_radius: float = opt(1.75, "deg",
                               "Radius around ra/dec for selecting visits when not by field_id.",
                               lo=0.0, lo_open=True)
    one_per_night_band: bool = opt(True, "", "Keep one visit per (night, band), the lowest airmass (Run 1).")
    use_dither: bool = opt(False, "", "Point at OpSim's ditheredRA/ditheredDec instead of the field centre.")
    bands: str = opt("ugrizy", "", "Bands to simulate, a subset of 'ugrizy'.")
    mjd_min: float = opt(0.0, "d", "Keep visits with MJD >= this (0 = no limit).", lo=0.0)
    mjd_max: float = opt(0.0, "d", "Keep visits with MJD < this (0 = no limit).", lo=0.0)
    max_visits: int = opt(0, "",
                          "Keep at most this many visits, spread evenly in time within each band "
                          "(0 = all).", lo=0)
    years: float = opt(10.0, "yr", "Length of the synthetic cadence.", lo=0.0, lo_open=True, hi=30.0)
    exptime: float = opt(0.0, "s",
                         "Override every visit's exposure time (0 = take it from the cadence).", lo=0.0)


@dataclass
class SupernovaeSection:
    enabled: bool = opt(True, "", "Simulate type Ia supernovae in host galaxies (plus hostless twins).")
    rate_boost: float = opt(270.0, "",
                            "Multiplier on the Dilday et al. (2010) SN Ia rate: 270 gives about 100 SNe Ia "
                            "with SNR > 5 per full-sensor image at each visit's depth (Run 3 used 100).",
                            lo=0.0)
    z_max: float = opt(1.2, "", "Highest supernova redshift.", lo=0.0, lo_open=True, hi=1.5)
    hostless_twins: bool = opt(True, "", "Add one hostless twin per hosted supernova (as Run 3 did).")


@dataclass
class LensingSection:
    enabled: bool = opt(True, "", "Sprinkle strongly lensed quasars onto lens galaxies.")
    source: str = opt("synthetic", "",
                      "'synthetic' (OM10-like systems drawn and solved by the project) or a path to an "
                      "OM10-format FITS table, relative to the config file.")
    density: float = opt(700.0, "1/deg^2",
                         "Lensed-quasar systems per square degree (Run 3: about 200 within 0.3 deg).",
                         lo=0.0, hi=1e5)


@dataclass
class SensorSection:
    nx: int = opt(instrument.SENSOR_NX, "pixel", "Sensor width (serial direction).", lo=16, hi=100_000)
    ny: int = opt(instrument.SENSOR_NY, "pixel", "Sensor height (parallel direction).", lo=16, hi=100_000)
    pixel_scale: float = opt(instrument.PIXEL_SCALE, "arcsec/pixel", "Plate scale.", lo=0.0, lo_open=True)
    read_noise: float = opt(instrument.READ_NOISE, "e-", "Read noise per pixel, rms.", lo=0.0)
    dark_current: float = opt(instrument.DARK_CURRENT, "e-/s", "Dark current per pixel.", lo=0.0)
    full_well: float = opt(instrument.FULL_WELL, "e-", "Saturation level.", lo=0.0, lo_open=True)


@dataclass
class StoreSection:
    """[store]: how pixel planes are written (calexps, differences, coadds, templates, detection coadds;
    docs/data-model.md, "Storage"). The defaults keep every bit, uncompressed (no CPU spent); `quantize` and
    `variance_bits` are lossy, within a stated fraction of each pixel's noise."""
    compression: str = opt("none", "", "HDF5 compression of pixel planes (lossless): 'gzip' (level 1 with byte "
                           "shuffle; 0.5 CPU-s per 4 Mpx calexp, 2.2x smaller; with quantize 0.25 0.4 CPU-s and 6x), "
                           "'lzf' (0.26 CPU-s, 1.4x) or 'none'.", choices=("gzip", "lzf", "none"))
    quantize: float = opt(0.0, "", "Round every image pixel to a power-of-two step of at most this fraction of "
                          "its own noise (sqrt of its variance), as fpack and the Rubin pipelines do: 0.25 adds at "
                          "most 0.52% to a pixel's variance (0.26% to its noise), with no bias, and compresses "
                          "about 5x with gzip; 0 keeps every bit.", lo=0.0, hi=1.0)
    variance_bits: int = opt(0, "", "Keep this many mantissa bits of variance planes (relative precision "
                             "2^-bits; 7: 0.8% on the variance, 0.4% on the noise); 0 keeps every bit.",
                             lo=0, hi=23)
    chunk: int = opt(256, "pixel", "Side of the square HDF5 chunks of compressed planes.", lo=16, hi=8192)
    keep_eimages: bool = opt(True, "", "Keep every eimage's pixels; false: the calexp task drops them once its "
                             "calexp is written (the attributes and truth stay), and a resume that must redo the "
                             "calexp simulates the visit again.")


@dataclass
class ValidateSection:
    """Thresholds of `twinkles-hpc validate` (docs/validation.md). They judge a run's outputs and never
    change them, so they are left out of the config fingerprint: a run directory can be revalidated
    with other thresholds."""
    match_radius_arcsec: float = opt(1.0, "arcsec", "Radius for matching Objects to truth sources.",
                                     lo=0.0, lo_open=True, hi=10.0)
    zp_max_mmag: float = opt(5.0, "mmag", "Largest |median over a band's visits of (calexp zero point - true "
                             "zero point)|: the band's systematic offset.",
                             lo=0.0, lo_open=True)
    astrom_max_mas: float = opt(10.0, "mas",
                                "Largest median over a band's visits of the mean offset of the fitted WCS from the "
                                "true WCS over the sensor.",
                                lo=0.0, lo_open=True)
    pa1_max_mmag: float = opt(5.0, "mmag", "PA1 photometric repeatability per band (SRD design 5, minimum 8).",
                              lo=0.0, lo_open=True)
    pa1_mag_min: float = opt(17.0, "mag", "Brightest true star magnitude (in the band) used for PA1.")
    pa1_mag_max: float = opt(21.5, "mag", "Faintest true star magnitude (in the band) used for PA1.")
    pa1_snr_min: float = opt(200.0, "",
                             "Smallest median psFlux / psFlux_Sigma of a star over its visits for PA1: PA1 measures "
                             "systematics on bright stars, where photon noise (1086 / SNR mmag) is small.", lo=0.0)
    pa1_shuffles: int = opt(50, "", "Random visit pairs drawn per star for PA1 (validate_drp numRandomShuffles).",
                            lo=1, hi=10_000)
    am1_max_mas: float = opt(10.0, "mas", "AM1 astrometric repeatability of star pairs 5' apart (SRD design 10).",
                             lo=0.0, lo_open=True)
    completeness_mag: float = opt(23.0, "mag",
                                  "Completeness is checked in the 0.5 mag r bin that ends at this magnitude.")
    completeness_min: float = opt(0.9, "", "Smallest completeness (stars + galaxies) in that bin.", lo=0.0, hi=1.0)
    purity_min: float = opt(0.9, "", "Smallest fraction of primary Objects with a truth source within the radius.",
                            lo=0.0, hi=1.0)
    phot_bias_max: float = opt(0.02, "",
                               "Largest |median(Object PSF flux / true flux) - 1| of isolated stars, per band.",
                               lo=0.0, lo_open=True)
    sn_chi2_max: float = opt(3.0, "", "Largest median chi^2/dof of supernova light curves against the truth.",
                             lo=0.0, lo_open=True)
    dia_chi2_max: float = opt(1.5, "", "DIA light curves: a supernova's DiaForcedSource light curve is good when "
                              "its chi^2/dof against the truth (one free constant per band) is below this.",
                              lo=0.0, lo_open=True)
    dia_good_min: float = opt(0.9, "", "Smallest fraction of good light curves among supernovae of peak true S/N "
                              ">= 20.", lo=0.0, hi=1.0)
    dia_efficiency_min: float = opt(0.95, "", "Smallest fraction of supernovae of peak true S/N >= 10 with a "
                                    "DiaObject within the radius.", lo=0.0, hi=1.0)
    dia_flux_bias_max: float = opt(0.01, "", "Largest |median(DiaForcedSource psFlux - band constant) / true "
                                   "flux - 1| over epochs of true S/N >= 20.", lo=0.0, lo_open=True)
    dia_blank_mean_max: float = opt(0.02, "", "Largest |mean flux / sigma| of PSF fluxes at blank positions on "
                                    "the differences.", lo=0.0, lo_open=True)
    dia_blank_std_tol: float = opt(0.05, "", "Largest |standard deviation of flux / sigma - 1| at blank positions "
                                   "on the differences.", lo=0.0, lo_open=True)
    dia_duplicates_max: float = opt(0.01, "", "Largest fraction of supernovae with a DiaObject that have two or "
                                    "more within the radius.", lo=0.0, hi=1.0)
    lens_completeness_min: float = opt(0.9, "", "Smallest fraction of findable lens systems (two images with mean "
                                       "i < 23, image separation >= 1\") with a candidate within 2\" of the "
                                       "centre.", lo=0.0, hi=1.0)
    lens_purity_min: float = opt(0.8, "", "Smallest fraction of lens candidates within 2\" of a true lens "
                                 "system's centre.", lo=0.0, hi=1.0)
    lens_lc_good_min: float = opt(0.9, "", "Smallest fraction of lensed images (peak true S/N >= 20, at least 0.7\" "
                                  "from the system's other images) whose LensedImageForcedSource light curve is "
                                  "good (lens_lc_chi2_max, lens_lc_scatter_max).", lo=0.0, hi=1.0)
    lens_lc_chi2_max: float = opt(1.5, "", "A lensed image's light curve is good when its chi^2/dof against the truth "
                                  "(no free constant) is at most this ...", lo=0.0, lo_open=True)
    lens_lc_scatter_max: float = opt(1.2, "", "... and the robust scatter of (flux - truth) / error is at most this.",
                                     lo=0.0, lo_open=True)
    rss_overhead_mb: float = opt(512.0, "MB",
                                 "Allowance above coadd.memory_per_rank for a coadd task's peak RSS (interpreter, "
                                 "libraries, catalogues).", lo=0.0)


#: Sections that belong to no stage, before the stages' sections; [validate] comes last.
GLOBAL_SECTIONS = (("run", RunSection), ("cadence", CadenceSection), ("sensor", SensorSection),
                   ("supernovae", SupernovaeSection), ("lensing", LensingSection), ("store", StoreSection))
#: Sections of earlier versions: a config that still has one is told where its keys went.
RENAMED_SECTIONS = {
    "level2": "[calexp], [coadd], [objects], [forced] and [ingest] (each with enabled = true; "
              "coadd_statistic is now [coadd] statistic)",
    "imsim": "[visit]", "instcat": "[visit] (write is now instcat)", "database": "[ingest]"}


class ConfigBase:
    """Methods of the Config class (its sections are the global ones and the stages', config_class())."""

    def sections(self):
        return [(f.name, getattr(self, f.name)) for f in fields(self) if not f.metadata.get("internal")]

    def to_dict(self):
        return {name: options.to_dict(sec) for name, sec in self.sections()}

    def fingerprint(self):
        """A canonical JSON string of every setting that shapes the outputs (not [validate]): two runs agree
        on outputs iff it is equal."""
        keep = {f.name for f in fields(self) if f.metadata.get("outputs", True)}
        return json.dumps({k: v for k, v in self.to_dict().items() if k in keep}, sort_keys=True)

    def resolve_path(self, p):
        return p if os.path.isabs(p) else os.path.normpath(os.path.join(self.base_dir, p))


_CONFIG_CLASS = None


def config_class():
    """The Config dataclass: the global sections, each stage's section (pipeline/registry.py) in pipeline
    order, then [validate]; built once."""
    global _CONFIG_CLASS
    if _CONFIG_CLASS is None:
        from twinkles_hpc.pipeline import registry
        spec = [(name, cls, field(default_factory=cls)) for name, cls in GLOBAL_SECTIONS + tuple(registry.sections())]
        spec.append(("validate", ValidateSection, field(default_factory=ValidateSection,
                                                        metadata=dict(outputs=False))))
        # directory the config file was read from (relative paths in it resolve against this), and its path
        spec.append(("base_dir", str, field(default=".", metadata=dict(internal=True))))
        spec.append(("path", str, field(default="<defaults>", metadata=dict(internal=True))))
        _CONFIG_CLASS = dataclasses.make_dataclass("Config", spec, bases=(ConfigBase,))
        _CONFIG_CLASS.__module__ = __name__
    return _CONFIG_CLASS


def __getattr__(name):
    if name == "Config":
        return config_class()
    raise AttributeError(name)


def _validate(cfg, check_inputs=True):
    p = cfg.path
    bands = cfg.cadence.bands
    if not bands or any(b not in instrument.BANDS for b in bands) or len(set(bands)) != len(bands):
        raise InputError(p, "cadence.bands", "distinct letters from 'ugrizy'", bands)
    c = cfg.cadence
    if c.mjd_max and c.mjd_max <= c.mjd_min:
        raise InputError(p, "cadence.mjd_max", f"0 or a value > cadence.mjd_min ({c.mjd_min})", c.mjd_max)
    if check_inputs and c.source != "synthetic" and not os.path.exists(cfg.resolve_path(c.source)):
        raise InputError(p, "cadence.source", "'synthetic' or an existing OpSim CSV/SQLite file",
                         cfg.resolve_path(c.source))
    from twinkles_hpc.pipeline import registry
    registry.check_config(cfg)
    V = cfg.validate
    if V.pa1_mag_max <= V.pa1_mag_min:
        raise InputError(p, "validate.pa1_mag_max", f"a value > validate.pa1_mag_min ({V.pa1_mag_min})",
                         V.pa1_mag_max)
    src = cfg.lensing.source
    if check_inputs and src != "synthetic" and not os.path.exists(cfg.resolve_path(src)):
        raise InputError(p, "lensing.source", "'synthetic' or an existing OM10-format FITS table",
                         cfg.resolve_path(src))


def from_dict(data, path="<dict>", base_dir=".", check_inputs=True):
    """Build a validated Config from a parsed TOML mapping; check_inputs: that the input files it names
    (cadence.source, lensing.source, relative to base_dir) exist."""
    cfg = config_class()(base_dir=base_dir, path=str(path))
    known = dict(cfg.sections())
    for sec_name, sec_data in data.items():
        if sec_name in RENAMED_SECTIONS and sec_name not in known:
            raise InputError(path, sec_name, f"its keys in {RENAMED_SECTIONS[sec_name]}", "an old section")
        if sec_name not in known:
            raise InputError(path, sec_name, "a section among [" + "], [".join(known) + "]", "unknown section")
        if not isinstance(sec_data, dict):
            raise InputError(path, sec_name, "a [table]", sec_data)
        options.apply(known[sec_name], sec_data, path, sec_name)
    _validate(cfg, check_inputs)
    return cfg


def load(path):
    """Read and validate a TOML config file; raises InputError with a one-line message."""
    path = str(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise InputError(path, "file", "an existing TOML config file", "not found") from None
    except IsADirectoryError:
        raise InputError(path, "file", "a TOML config file", "a directory") from None
    except OSError as exc:
        raise InputError(path, "file", "a readable TOML config file", exc.strerror or str(exc)) from None
    except UnicodeDecodeError as exc:
        raise InputError(path, "encoding", "UTF-8 text (TOML)", f"byte {exc.start}: {exc.reason}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(path, "syntax", "valid TOML", str(exc)) from None
    return from_dict(data, path=path, base_dir=os.path.dirname(os.path.abspath(path)))


def defaults_toml():
    """Every field with its default, unit and doc, as a commented TOML file."""
    out = ["# twinkles-hpc configuration: every field, its default, unit and meaning.", ""]
    for name, sec in config_class()().sections():
        out += options.section_toml(name, sec)
    return "\n".join(out)
