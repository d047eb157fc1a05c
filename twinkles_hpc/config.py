"""Typed, documented run configuration read from TOML.

Every field has a type, a unit, a default and a one-line doc (`twinkles-hpc config --defaults` prints
them all). Unknown sections or keys, wrong types and impossible values raise `InputError` naming the
file, the key and what was expected.
"""
from __future__ import annotations

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
class SkySection:
    radius: float = opt(0.3, "deg",
                        "Radius of the static-sky catalogue around the pointing (covers every rotation).",
                        lo=0.0, lo_open=True, hi=5.0)
    star_mag_limit: float = opt(26.5, "mag", "Faintest star, r band AB.", lo=10.0, hi=32.0)
    galaxy_mag_limit: float = opt(28.0, "mag", "Faintest galaxy (bulge + disk), r band AB.", lo=10.0, hi=32.0)
    star_density_scale: float = opt(1.0, "", "Multiplier on the star number counts.", lo=0.0)
    galaxy_density_scale: float = opt(1.0, "", "Multiplier on the galaxy number counts.", lo=0.0)


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
class InstcatSection:
    write: bool = opt(False, "",
                      "Write a PhoSim instance catalogue per visit (instcat/phosim_cat_NNNNNNNN.txt).")


@dataclass
class SensorSection:
    nx: int = opt(instrument.SENSOR_NX, "pixel", "Sensor width (serial direction).", lo=16, hi=100_000)
    ny: int = opt(instrument.SENSOR_NY, "pixel", "Sensor height (parallel direction).", lo=16, hi=100_000)
    pixel_scale: float = opt(instrument.PIXEL_SCALE, "arcsec/pixel", "Plate scale.", lo=0.0, lo_open=True)
    read_noise: float = opt(instrument.READ_NOISE, "e-", "Read noise per pixel, rms.", lo=0.0)
    dark_current: float = opt(instrument.DARK_CURRENT, "e-/s", "Dark current per pixel.", lo=0.0)
    full_well: float = opt(instrument.FULL_WELL, "e-", "Saturation level.", lo=0.0, lo_open=True)


@dataclass
class ImsimSection:
    psf_fwhm_gradient: float = opt(0.05, "",
                                   "Fractional growth of the PSF FWHM from sensor centre to corner.",
                                   lo=0.0, hi=1.0)
    psf_ellip_gradient: float = opt(0.02, "", "PSF ellipticity at the sensor corner.", lo=0.0, hi=0.5)
    chunk_objects: int = opt(4000, "objects",
                             "Objects rendered between mid-visit checkpoint opportunities.", lo=1)
    checkpoint_interval: float = opt(120.0, "s",
                                     "Write a mid-visit checkpoint after a chunk when this long has "
                                     "passed since the last one (0 = after every chunk).", lo=0.0)
    pointing_error: float = opt(1.0, "arcsec",
                                "Rms telescope pointing error per axis: the image is rendered at the true "
                                "pointing, the eimage header carries the nominal one.", lo=0.0)
    rotation_error: float = opt(30.0, "arcsec", "Rms rotator (rotSkyPos) error.", lo=0.0)
    compression: str = opt("none", "", "HDF5 compression of pixel planes.",
                           choices=("none", "lzf", "gzip"))
    fits: bool = opt(False, "", "Also write each eimage as FITS (with WCS) beside the HDF5 file.")
    noise: bool = opt(True, "", "Add sky, Poisson and read noise (False: expected electrons, for tests).")
    cosmic_ray_rate: float = opt(0.04, "1/cm^2/s",
                                 "Cosmic-ray tracks per cm^2 of sensor per second of exposure, added when "
                                 "noise = true (0 = none); ~2x the sea-level muon flux (docs/imsim.md).",
                                 lo=0.0)


@dataclass
class Level2Section:
    calibrate: bool = opt(False, "",
                          "Calibrate every visit into a calexp (background, detection, astrometric and "
                          "photometric calibration, PSF model) against the reference catalogue.")
    coadd: bool = opt(False, "",
                      "Coadd the calexps of each band on the skymap's patches (coadds/B/patch-I-J.h5); "
                      "needs calibrate = true.")
    memory_per_rank: int = opt(2 << 30, "bytes",
                               "Memory budget of one coadd task (one rank): each patch is coadded in "
                               "sub-regions sized so that the stack of their warps fits it (>= 16 MiB).",
                               lo=16 << 20)
    patch_size: int = opt(4000, "pixel", "Side of a skymap patch (the box it owns), at the sensor's pixel scale.",
                          lo=16, hi=100_000)
    patch_overlap: int = opt(100, "pixel", "Width each patch's coadd extends into its neighbours on every side.",
                             lo=0)
    coadd_statistic: str = opt("mean", "",
                               "'mean' (inverse-variance weighted, sigma-clipped) or 'median' per pixel.",
                               choices=("mean", "median"))
    objects: bool = opt(False, "",
                        "Detect, deblend and measure Objects on each patch's coadds (objects/patch-I-J.h5: "
                        "multi-band detection, per-band coadd PSF, forced PSF and aperture fluxes, "
                        "extendedness, detect_isPrimary); needs coadd = true.")
    forced: bool = opt(False, "",
                       "Forced photometry of every primary Object on every calexp (forced/vNNNNNNNN-B.h5, "
                       "table forced_source: objectId, ccdVisitId, psFlux, psFlux_Sigma in nJy, flags, x, y); "
                       "needs objects = true.")
    ingest: bool = opt(False, "",
                       "Ingest the run into the catalogue database ([database] url): CcdVisit, Object, "
                       "ForcedSource, the truth tables and ObjectTruthMatch; needs forced = true.")


@dataclass
class DatabaseSection:
    url: str = opt("", "",
                   "Catalogue database of [level2] ingest: '' = sqlite:///RUNDIR/level2.sqlite, or "
                   "mysql+pymysql://[user@]host[:port]/database; never a password (docs/database.md).")
    batch_size: int = opt(50_000, "rows", "Rows per INSERT batch (a file's rows are one transaction).", lo=1)
    match_radius: float = opt(1.0, "arcsec",
                              "ObjectTruthMatch: every truth source this close to a primary Object is a match.",
                              lo=0.0, lo_open=True, hi=60.0)


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
    rss_overhead_mb: float = opt(512.0, "MB",
                                 "Allowance above level2.memory_per_rank for a coadd task's peak RSS (interpreter, "
                                 "libraries, catalogues).", lo=0.0)


@dataclass
class Config:
    run: RunSection = field(default_factory=RunSection)
    cadence: CadenceSection = field(default_factory=CadenceSection)
    sky: SkySection = field(default_factory=SkySection)
    supernovae: SupernovaeSection = field(default_factory=SupernovaeSection)
    lensing: LensingSection = field(default_factory=LensingSection)
    instcat: InstcatSection = field(default_factory=InstcatSection)
    sensor: SensorSection = field(default_factory=SensorSection)
    imsim: ImsimSection = field(default_factory=ImsimSection)
    level2: Level2Section = field(default_factory=Level2Section)
    database: DatabaseSection = field(default_factory=DatabaseSection)
    validate: ValidateSection = field(default_factory=ValidateSection, metadata=dict(outputs=False))
    #: Directory the config file was read from; relative paths in it resolve against this.
    base_dir: str = field(default=".", metadata=dict(internal=True))
    path: str = field(default="<defaults>", metadata=dict(internal=True))

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


def _validate(cfg):
    p = cfg.path
    bands = cfg.cadence.bands
    if not bands or any(b not in instrument.BANDS for b in bands) or len(set(bands)) != len(bands):
        raise InputError(p, "cadence.bands", "distinct letters from 'ugrizy'", bands)
    c = cfg.cadence
    if c.mjd_max and c.mjd_max <= c.mjd_min:
        raise InputError(p, "cadence.mjd_max", f"0 or a value > cadence.mjd_min ({c.mjd_min})", c.mjd_max)
    if c.source != "synthetic" and not os.path.exists(cfg.resolve_path(c.source)):
        raise InputError(p, "cadence.source", "'synthetic' or an existing OpSim CSV/SQLite file",
                         cfg.resolve_path(c.source))
    L = cfg.level2
    if L.coadd and not L.calibrate:
        raise InputError(p, "level2.coadd", "false unless level2.calibrate = true (the coadd reads calexps)",
                         L.coadd)
    if L.objects and not L.coadd:
        raise InputError(p, "level2.objects", "false unless level2.coadd = true (Objects are measured on the "
                         "coadds)", L.objects)
    if L.forced and not L.objects:
        raise InputError(p, "level2.forced", "false unless level2.objects = true (forced photometry measures "
                         "the Objects on the calexps)", L.forced)
    if L.ingest and not L.forced:
        raise InputError(p, "level2.ingest", "false unless level2.forced = true (the database holds the "
                         "ForcedSource of every Object)", L.ingest)
    if cfg.database.url:
        from twinkles_hpc.store.db import check_url
        try:
            check_url(cfg.database.url)
        except InputError as exc:
            raise InputError(p, "database.url", exc.expected, exc.source) from None
    if 2 * L.patch_overlap >= L.patch_size:
        raise InputError(p, "level2.patch_overlap", f"a value < level2.patch_size / 2 ({L.patch_size / 2:g}) pixel",
                         L.patch_overlap)
    V = cfg.validate
    if V.pa1_mag_max <= V.pa1_mag_min:
        raise InputError(p, "validate.pa1_mag_max", f"a value > validate.pa1_mag_min ({V.pa1_mag_min})",
                         V.pa1_mag_max)
    src = cfg.lensing.source
    if src != "synthetic" and not os.path.exists(cfg.resolve_path(src)):
        raise InputError(p, "lensing.source", "'synthetic' or an existing OM10-format FITS table",
                         cfg.resolve_path(src))


def from_dict(data, path="<dict>", base_dir="."):
    """Build a validated Config from a parsed TOML mapping."""
    cfg = Config(base_dir=base_dir, path=str(path))
    known = dict(cfg.sections())
    for sec_name, sec_data in data.items():
        if sec_name not in known:
            raise InputError(path, sec_name, "a section among [" + "], [".join(known) + "]", "unknown section")
        if not isinstance(sec_data, dict):
            raise InputError(path, sec_name, "a [table]", sec_data)
        options.apply(known[sec_name], sec_data, path, sec_name)
    _validate(cfg)
    return cfg


def load(path):
    """Read and validate a TOML config file; raises InputError with a one-line message."""
    path = str(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise InputError(path, "file", "an existing TOML config file", "not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(path, "syntax", "valid TOML", str(exc)) from None
    return from_dict(data, path=path, base_dir=os.path.dirname(os.path.abspath(path)))


def defaults_toml():
    """Every field with its default, unit and doc, as a commented TOML file."""
    out = ["# twinkles-hpc configuration: every field, its default, unit and meaning.", ""]
    for name, sec in Config().sections():
        out += options.section_toml(name, sec)
    return "\n".join(out)
