"""The catalogue database schema: Qserv baseline names (CcdVisit, Object, ForcedSource, DiaSource,
DiaObject, DiaForcedSource) and the simulation's truth, declared once with SQLAlchemy Core.

Units: fluxes in nanojansky (AB magnitude = 31.4 - 2.5 log10(flux)), angles in degrees, times in MJD
(TAI), sizes in pixels. Every column carries its unit in `comment=` (MySQL/MariaDB store it). All
float columns are DOUBLE and nullable: NaN and +-inf are stored as NULL (MySQL has no IEEE special
values). Foreign keys are not declared (as in Qserv): a bulk load needs no ordering between tables.
"""
import sqlalchemy as sa

BANDS = "ugrizy"
#: truthKind values of ObjectTruthMatch
TRUTH_KINDS = ("star", "galaxy", "supernova", "lensed_image")

metadata = sa.MetaData()
_MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}     # InnoDB: transactional ingest


def _id(name, doc, primary_key=False):
    return sa.Column(name, sa.BigInteger, primary_key=primary_key, autoincrement=False,
                     nullable=False, comment=doc)


def _f(name, doc):
    return sa.Column(name, sa.Double, comment=doc)


def _s(name, length, doc, nullable=True):
    return sa.Column(name, sa.String(length), nullable=nullable, comment=doc)


def _flags(doc="bit flags"):
    return sa.Column("flags", sa.BigInteger, nullable=False, server_default="0", comment=doc)


def _per_band(fmt, doc):
    return [_f(fmt.format(b=b), doc.format(b=b)) for b in BANDS]


CcdVisit = sa.Table(
    "CcdVisit", metadata,
    _id("ccdVisitId", "one sensor in one visit", primary_key=True),
    _id("visitId", "the visit (OpSim obsHistID)"),
    _s("raftName", 8, "raft, e.g. R22"),
    _s("ccdName", 8, "sensor in the raft, e.g. S11"),
    _s("filterName", 1, "band: one of ugrizy", nullable=False),
    _f("obsStart", "start of the exposure, MJD (TAI)"),
    sa.Column("expMidpt", sa.Double, nullable=False, comment="mid-point of the exposure, MJD (TAI)"),
    _f("expTime", "exposure time, s"),
    _f("ra", "right ascension of the sensor centre, deg"),
    _f("decl", "declination of the sensor centre, deg"),
    _f("zenithDistance", "zenith distance at the mid-point, deg"),
    sa.Column("xSize", sa.Integer, comment="sensor width, pixels"),
    sa.Column("ySize", sa.Integer, comment="sensor height, pixels"),
    _f("zeroPoint", "AB magnitude of 1 electron in the exposure"),
    _f("seeing", "PSF FWHM, arcsec"),
    _f("skyBg", "mean sky background, electrons per pixel"),
    _f("skyNoise", "RMS of the sky background, electrons per pixel"),
    _flags(),
    sa.Index("ix_CcdVisit_visitId", "visitId"),
    comment="one sensor in one visit (calexp metadata)", **_MYSQL)

Object = sa.Table(
    "Object", metadata,
    _id("objectId", "deep-coadd detection", primary_key=True),
    sa.Column("parentObjectId", sa.BigInteger, comment="deblend parent (NULL: not deblended)"),
    sa.Column("psRa", sa.Double, nullable=False, comment="point-source model right ascension, deg"),
    sa.Column("psDecl", sa.Double, nullable=False, comment="point-source model declination, deg"),
    *_per_band("{b}PsFlux", "{b}-band point-source flux on the coadd, nJy"),
    *_per_band("{b}PsFluxSigma", "uncertainty of {b}PsFlux, nJy"),
    _f("extendedness", "0 point-like .. 1 extended"),
    _f("Ixx", "adaptive second moment xx of the light (patch pixel axes), arcsec^2"),
    _f("Iyy", "adaptive second moment yy of the light (patch pixel axes), arcsec^2"),
    _f("Ixy", "adaptive second moment xy of the light (patch pixel axes), arcsec^2"),
    sa.Column("shape_flag", sa.Boolean, comment="true: the moments (Ixx, Iyy, Ixy) failed or are unreliable"),
    _flags("detection flags (level2 detect: objects detFlags)"),
    comment="deep-coadd objects: the primary ones (detect_isPrimary) of every patch", **_MYSQL)

ForcedSource = sa.Table(
    "ForcedSource", metadata,
    _id("objectId", "Object.objectId", primary_key=True),
    _id("ccdVisitId", "CcdVisit.ccdVisitId", primary_key=True),
    _f("psFlux", "point-source flux at the Object's position, nJy"),
    _f("psFlux_Sigma", "uncertainty of psFlux, nJy"),
    _flags(),
    # the primary key (objectId, ccdVisitId) serves the light-curve query; this serves per-visit reads
    sa.Index("ix_ForcedSource_ccdVisitId", "ccdVisitId"),
    comment="forced photometry of every Object in every CcdVisit", **_MYSQL)

DiaSource = sa.Table(
    "DiaSource", metadata,
    _id("diaSourceId", "difference-image detection", primary_key=True),
    _id("ccdVisitId", "CcdVisit.ccdVisitId"),
    sa.Column("diaObjectId", sa.BigInteger, comment="DiaObject.diaObjectId (NULL: not associated)"),
    sa.Column("midPointTai", sa.Double, nullable=False, comment="exposure mid-point, MJD (TAI)"),
    _s("filterName", 1, "band: one of ugrizy", nullable=False),
    sa.Column("ra", sa.Double, nullable=False, comment="right ascension, deg"),
    sa.Column("decl", sa.Double, nullable=False, comment="declination, deg"),
    _f("x", "sensor column of the centroid, pixels"),
    _f("y", "sensor row of the centroid, pixels"),
    _f("psFlux", "point-source flux on the difference image, nJy"),
    _f("psFluxErr", "uncertainty of psFlux, nJy"),
    _f("snr", "signal-to-noise ratio of the detection"),
    _flags("timedomain/dia.py DIA_FLAGS: EDGE 1, SATURATED 2, CR 4, BAD_SUBTRACTION 8, NEGATIVE 16, DIPOLE 32, "
           "NO_FLUX 64"),
    sa.Index("ix_DiaSource_diaObjectId", "diaObjectId"),
    sa.Index("ix_DiaSource_ccdVisitId", "ccdVisitId"),
    comment="difference-image detections (every DiaSource; the flagged ones are not associated)", **_MYSQL)

DiaObject = sa.Table(
    "DiaObject", metadata,
    _id("diaObjectId", "association of DiaSources: the diaSourceId of its first one", primary_key=True),
    sa.Column("ra", sa.Double, nullable=False, comment="mean right ascension of its DiaSources, deg"),
    sa.Column("decl", sa.Double, nullable=False, comment="mean declination of its DiaSources, deg"),
    sa.Column("nDiaSources", sa.Integer, nullable=False, comment="number of associated DiaSources"),
    _f("firstMidPointTai", "time of its first DiaSource, MJD (TAI)"),
    _f("lastMidPointTai", "time of its last DiaSource, MJD (TAI)"),
    *_per_band("{b}PsFluxMean", "inverse-variance weighted mean {b}-band DiaSource psFlux, nJy"),
    *_per_band("{b}PsFluxMeanErr", "uncertainty of {b}PsFluxMean, nJy"),
    *_per_band("{b}PsFluxChi2", "chi^2 of the {b}-band DiaSource fluxes about {b}PsFluxMean"),
    *[sa.Column(f"{b}PsFluxNdata", sa.Integer, comment=f"number of {b}-band DiaSources") for b in BANDS],
    _flags(),
    comment="difference-image objects", **_MYSQL)

DiaForcedSource = sa.Table(
    "DiaForcedSource", metadata,
    _id("diaObjectId", "DiaObject.diaObjectId", primary_key=True),
    _id("ccdVisitId", "CcdVisit.ccdVisitId", primary_key=True),
    _s("filterName", 1, "band: one of ugrizy", nullable=False),
    sa.Column("midPointTai", sa.Double, nullable=False, comment="exposure mid-point, MJD (TAI)"),
    _f("psFlux", "point-source flux on the difference image at the DiaObject's position, nJy"),
    _f("psFluxErr", "uncertainty of psFlux, nJy"),
    _f("totFlux", "point-source flux on the calexp (the direct image) at the same position, nJy"),
    _f("totFluxErr", "uncertainty of totFlux, nJy"),
    _flags("photometry flags of psFlux (level2/photometry.py FLAG_*)"),
    sa.Index("ix_DiaForcedSource_ccdVisitId", "ccdVisitId"),
    comment="forced photometry of every DiaObject in every CcdVisit with a difference image", **_MYSQL)

DiaObjectTruthMatch = sa.Table(
    "DiaObjectTruthMatch", metadata,
    _id("diaObjectId", "DiaObject.diaObjectId", primary_key=True),
    _id("truthId", "id of the truth variable (table given by truthKind)", primary_key=True),
    _s("truthKind", 16, "supernova (TruthSupernova) or lensed_image (TruthLensedImage)", nullable=False),
    sa.Column("distance_arcsec", sa.Double, nullable=False, comment="DiaObject-truth separation, arcsec"),
    sa.Index("ix_DiaObjectTruthMatch_truthId", "truthId"),
    comment="DiaObjects associated with true variables within the match radius; the nearest is the match",
    **_MYSQL)

LensedImage = sa.Table(
    "LensedImage", metadata,
    _id("lensedImageId", "lensSystemId x 8 + imageIndex", primary_key=True),
    _id("lensSystemId", "the lens candidate (lenses/candidates.h5 lensCandidateId) whose scene holds it"),
    sa.Column("imageIndex", sa.Integer, nullable=False, comment="index of the point image in its scene"),
    sa.Column("ra", sa.Double, nullable=False, comment="right ascension from the scene fit on the coadds, deg"),
    sa.Column("decl", sa.Double, nullable=False, comment="declination from the scene fit on the coadds, deg"),
    *_per_band("{b}PsFluxMean", "{b}-band flux of the point image on the coadd (scene fit), nJy"),
    *_per_band("{b}PsFluxMeanErr", "uncertainty of {b}PsFluxMean, nJy"),
    sa.Index("ix_LensedImage_lensSystemId", "lensSystemId"),
    comment="point images of the lens candidates' scene models (stage lensmodel)", **_MYSQL)

LensedImageForcedSource = sa.Table(
    "LensedImageForcedSource", metadata,
    _id("lensedImageId", "LensedImage.lensedImageId", primary_key=True),
    _id("ccdVisitId", "CcdVisit.ccdVisitId", primary_key=True),
    _id("lensSystemId", "LensedImage.lensSystemId"),
    _s("filterName", 1, "band: one of ugrizy", nullable=False),
    sa.Column("midPointTai", sa.Double, nullable=False, comment="exposure mid-point, MJD (TAI)"),
    _f("psFlux", "the point image's flux in the visit, nJy: the scene fit on the calexp (directFlux)"),
    _f("psFluxErr", "uncertainty of psFlux, nJy"),
    _f("directFlux", "scene fit on the calexp (galaxy, images and neighbours free), nJy"),
    _f("directFluxErr", "uncertainty of directFlux, nJy"),
    _f("diffFlux", "scene fit on the difference image (images only), nJy"),
    _f("diffFluxErr", "uncertainty of diffFlux, nJy (templateFlux + diffFlux is the image's flux; the "
       "template's own error, common to a band's visits, left out)"),
    _f("templateFlux", "the point image's flux on the visit's template (scene fit), nJy"),
    _f("galaxyFlux", "the lens galaxy's flux on the calexp (scene fit), nJy"),
    _flags("timedomain/scene.py FLAGS: EDGE 1, MASKED 2, NO_DATA 4; NO_DIFFERENCE 8 (timedomain/lensphot.py)"),
    sa.Index("ix_LensedImageForcedSource_ccdVisitId", "ccdVisitId"),
    comment="per-visit fluxes of the lensed point images (stage lensphot)", **_MYSQL)

LensedImageTruthMatch = sa.Table(
    "LensedImageTruthMatch", metadata,
    _id("lensedImageId", "LensedImage.lensedImageId", primary_key=True),
    _id("truthId", "TruthLensedImage.imageId", primary_key=True),
    _s("truthKind", 16, "lensed_image (TruthLensedImage)", nullable=False),
    sa.Column("distance_arcsec", sa.Double, nullable=False, comment="LensedImage-truth separation, arcsec"),
    sa.Index("ix_LensedImageTruthMatch_truthId", "truthId"),
    comment="LensedImages near true lensed images within the match radius; the nearest is the match", **_MYSQL)

ObjectTruthMatch = sa.Table(
    "ObjectTruthMatch", metadata,
    _id("objectId", "Object.objectId", primary_key=True),
    _id("truthId", "id of the truth source (table given by truthKind)", primary_key=True),
    _s("truthKind", 16, "star (TruthStar), galaxy (TruthGalaxy), supernova (TruthSupernova), "
       "lensed_image (TruthLensedImage)", nullable=False),
    sa.Column("distance_arcsec", sa.Double, nullable=False, comment="Object-truth separation, arcsec"),
    sa.Index("ix_ObjectTruthMatch_truthId", "truthId"),       # truth id -> its Object (lightcurve --truth-id)
    comment="Objects associated with truth sources; the nearest is the Object's match", **_MYSQL)

# ---- truth (the simulation's input sky; truth.h5 and variables/truth-*.h5) -------------------------

TruthStar = sa.Table(
    "TruthStar", metadata,
    _id("starId", "star id", primary_key=True),
    sa.Column("ra", sa.Double, nullable=False, comment="right ascension, deg"),
    sa.Column("decl", sa.Double, nullable=False, comment="declination, deg"),
    _f("teff", "effective temperature, K"),
    _s("sed", 64, "SED name"),
    _f("magNorm", "SED normalisation, AB magnitude at 500 nm"),
    *_per_band("{b}Mag", "true {b}-band AB magnitude"),
    comment="stars of the input sky (truth.h5 stars)", **_MYSQL)

TruthGalaxy = sa.Table(
    "TruthGalaxy", metadata,
    _id("galaxyId", "galaxy id", primary_key=True),
    sa.Column("ra", sa.Double, nullable=False, comment="right ascension, deg"),
    sa.Column("decl", sa.Double, nullable=False, comment="declination, deg"),
    _f("redshift", "redshift"),
    *[c for part in ("bulge", "disk") for c in (
        *_per_band("{b}" + part.title() + "Mag", f"true {{b}}-band AB magnitude of the {part}"),
        _f(part + "Hlr", f"{part} half-light radius, arcsec"),
        _f(part + "Q", f"{part} axis ratio b/a"),
        _f(part + "Pa", f"{part} position angle, deg"),
        _s(part + "Sed", 64, f"{part} SED name"),
        _f(part + "MagNorm", f"{part} SED normalisation, AB magnitude at 500 nm"))],
    comment="galaxies of the input sky, lens galaxies as sprinkled (truth.h5 galaxies)", **_MYSQL)

TruthSupernova = sa.Table(
    "TruthSupernova", metadata,
    _id("snId", "supernova id (TruthVariableFlux.sourceId)", primary_key=True),
    sa.Column("ra", sa.Double, nullable=False, comment="right ascension, deg"),
    sa.Column("decl", sa.Double, nullable=False, comment="declination, deg"),
    _f("redshift", "redshift"),
    _f("t0", "time of B-band peak, MJD"),
    _f("x1", "SALT2-like stretch"),
    _f("c", "SALT2-like colour"),
    _f("MB", "peak absolute B magnitude"),
    _f("mu", "distance modulus, mag"),
    _id("hostId", "host galaxy id (-1: hostless)"),
    _id("twinOf", "supernova whose hostless twin this is (-1: none)"),
    _f("hostOffsetArcsec", "offset from the host centre, arcsec"),
    comment="type Ia supernovae (truth.h5 supernovae)", **_MYSQL)

TruthLensSystem = sa.Table(
    "TruthLensSystem", metadata,
    _id("sysId", "lens system id", primary_key=True),
    _id("lensGalaxyId", "TruthGalaxy.galaxyId of the lens"),
    sa.Column("ra", sa.Double, nullable=False, comment="lens right ascension, deg"),
    sa.Column("decl", sa.Double, nullable=False, comment="lens declination, deg"),
    _f("zLens", "lens redshift"),
    _f("zSrc", "quasar redshift"),
    _f("velDisp", "lens velocity dispersion, km/s"),
    sa.Column("nImg", sa.Integer, comment="number of images"),
    _f("imSep", "maximum image separation, arcsec"),
    _f("tauObs", "quasar damped-random-walk time scale, observer frame, days"),
    *_per_band("{b}SrcMag", "unlensed mean {b}-band AB magnitude of the quasar"),
    comment="OM10 lensed quasars as sprinkled (truth.h5 lens_systems)", **_MYSQL)

TruthLensedImage = sa.Table(
    "TruthLensedImage", metadata,
    _id("imageId", "image id (TruthVariableFlux.sourceId)", primary_key=True),
    _id("sysId", "TruthLensSystem.sysId"),
    sa.Column("imageIndex", sa.Integer, nullable=False, comment="index of the image in its system"),
    sa.Column("ra", sa.Double, nullable=False, comment="right ascension, deg"),
    sa.Column("decl", sa.Double, nullable=False, comment="declination, deg"),
    _f("xArcsec", "offset from the lens centre towards +RA, arcsec"),
    _f("yArcsec", "offset from the lens centre towards +Dec, arcsec"),
    _f("magnification", "signed magnification mu (negative: saddle-point image)"),
    _f("delay", "time delay after the first-arriving image, days"),
    sa.Index("ix_TruthLensedImage_sysId", "sysId"),
    comment="lensed quasar images (truth.h5 lensed_images)", **_MYSQL)

TruthVariable = sa.Table(
    "TruthVariable", metadata,
    _id("sourceId", "supernova or lensed-image id", primary_key=True),
    sa.Column("kind", sa.SmallInteger, nullable=False, comment="1 supernova, 2 lensed quasar image"),
    sa.Column("ra", sa.Double, nullable=False, comment="right ascension, deg"),
    sa.Column("decl", sa.Double, nullable=False, comment="declination, deg"),
    _id("parentId", "supernova: host galaxy id (-1 hostless); image: TruthLensSystem.sysId"),
    _f("redshift", "redshift"),
    comment="every variable point source (truth.h5 variables)", **_MYSQL)

TruthVariableFlux = sa.Table(
    "TruthVariableFlux", metadata,
    _id("sourceId", "TruthVariable.sourceId", primary_key=True),
    _id("visitId", "CcdVisit.visitId", primary_key=True),
    _s("filterName", 1, "band: one of ugrizy", nullable=False),
    sa.Column("mjd", sa.Double, nullable=False, comment="visit time, MJD"),
    _f("mag", "true AB magnitude, lensing included (NULL where the flux is 0)"),
    sa.Column("fluxNjy", sa.Double, nullable=False, comment="true flux, nJy, lensing included"),
    sa.Index("ix_TruthVariableFlux_visitId", "visitId"),
    comment="true flux of every variable in every visit (variables/truth-*.h5); a supernova "
            "without a row has no light in that visit", **_MYSQL)

#: truth.h5 dataset -> (table, {HDF5 column: database column}); unlisted columns are not stored
TRUTH_H5 = {
    "stars": (TruthStar, {"id": "starId", "dec": "decl", "mag_norm": "magNorm",
                          **{f"mag_{b}": f"{b}Mag" for b in BANDS}}),
    "galaxies": (TruthGalaxy, {"id": "galaxyId", "dec": "decl", **{
        f"{p}_{k}": f"{p}{v}" for p in ("bulge", "disk") for k, v in (
            ("hlr", "Hlr"), ("q", "Q"), ("pa", "Pa"), ("sed", "Sed"), ("mag_norm", "MagNorm"))},
        **{f"{p}_mag_{b}": f"{b}{p.title()}Mag" for p in ("bulge", "disk") for b in BANDS}}),
    "supernovae": (TruthSupernova, {"id": "snId", "dec": "decl", "M_B": "MB", "host_id": "hostId",
                                    "twin_of": "twinOf", "host_offset_arcsec": "hostOffsetArcsec"}),
    "lens_systems": (TruthLensSystem, {
        "sys_id": "sysId", "lens_galaxy_id": "lensGalaxyId", "dec": "decl", "zlens": "zLens",
        "zsrc": "zSrc", "veldisp": "velDisp", "nimg": "nImg", "imsep": "imSep",
        "tau_obs": "tauObs", **{f"src_mag_{b}": f"{b}SrcMag" for b in BANDS}}),
    "lensed_images": (TruthLensedImage, {
        "image_id": "imageId", "sys_id": "sysId", "image_index": "imageIndex", "dec": "decl",
        "x_arcsec": "xArcsec", "y_arcsec": "yArcsec", "mag": "magnification"}),
    "variables": (TruthVariable, {"source_id": "sourceId", "dec": "decl", "parent_id": "parentId"}),
}
#: variables/truth-*.h5 `truth` (sky.variables.TRUTH_DTYPE) -> TruthVariableFlux
TRUTH_FLUX_COLUMNS = {"source_id": "sourceId", "visit_id": "visitId", "band": "filterName",
                      "flux_njy": "fluxNjy"}
