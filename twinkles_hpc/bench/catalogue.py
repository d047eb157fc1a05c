"""A synthetic Level 2 catalogue at a multiple of Twinkles Run 1.1 (1120 CcdVisits, 41,653 Objects, 33.8
million ForcedSources) for `twinkles-hpc bench ingest`: CcdVisit, Object and ForcedSource rows with the
value distributions of a deep-drilling field, generated one CcdVisit at a time.

The catalogue is `fields` sensor footprints observed in the same visits. Scale s >= 1 adds sensors (s
footprints of Run 1.1's 41,653 Objects and 1120 visits); s < 1 shortens the survey and shrinks the
footprint alike (sqrt(s) of the visits, sqrt(s) of the Objects). Either way there are s x 33.8 million
ForcedSources: each Object is measured in a CcdVisit with Run 1.1's probability FILL. Every value is
seeded by (seed, field, visit), so the rows do not depend on how they are grouped into calls.
"""
import math
from dataclasses import dataclass

import numpy as np

from twinkles_hpc.bench.report import RUN1
from twinkles_hpc.store import schema

#: The share of a field's Objects measured in one of its CcdVisits (Run 1.1: 0.72)
FILL = RUN1["ForcedSource"] / (RUN1["CcdVisit"] * RUN1["Object"])
BANDS = schema.BANDS
BAND_SHARE = (0.08, 0.10, 0.22, 0.22, 0.20, 0.18)               # of the visits
WAVELENGTH_NM = np.array([367.0, 482.0, 622.0, 754.0, 869.0, 971.0])
#: AB magnitude of one electron in a 30 s exposure at airmass 1, and the extinction (mag per airmass)
ZERO_POINT = np.array([30.2, 32.0, 31.8, 31.6, 31.2, 30.4])
EXTINCTION = np.array([0.50, 0.20, 0.12, 0.09, 0.07, 0.06])
SKY_E = np.array([80.0, 400.0, 850.0, 1300.0, 1900.0, 2100.0])    # dark sky, electrons per pixel in 30 s
COADD_DEPTH = np.array([26.0, 27.3, 27.5, 27.0, 26.4, 25.3])     # 5-sigma point source, AB
COLOURS = ((1.0, 0.4), (0.5, 0.3), (0.0, 0.0), (-0.25, 0.2), (-0.35, 0.25), (-0.4, 0.3))   # mean, sd of m_b - m_r
PIXEL_ARCSEC, READ_NOISE, EXPTIME = 0.2, 8.0, 30.0
SENSOR_DEG = 0.22
#: 21 science rafts, the centre one first (field 0 is R22 S11, the Twinkles sensor)
RAFTS = tuple(sorted((f"R{i}{j}" for i in range(5) for j in range(5) if (i in (0, 4)) + (j in (0, 4)) < 2),
                     key=lambda r: (abs(int(r[1]) - 2) + abs(int(r[2]) - 2), r)))


@dataclass(frozen=True)
class Layout:
    """How many fields (sensors), visits and Objects a catalogue of `scale` x Run 1.1 has."""
    scale: float
    fields: int
    visits: int
    objects_per_field: tuple

    @classmethod
    def of(cls, scale):
        time = min(1.0, math.sqrt(scale))
        area = scale / time
        fields = max(1, math.ceil(area - 1e-9))
        n_obj = max(fields, round(RUN1["Object"] * area))
        per = tuple(int(len(c)) for c in np.array_split(np.arange(n_obj), fields))
        return cls(scale, fields, max(1, round(RUN1["CcdVisit"] * time)), per)

    @property
    def ccd_visits(self):
        return self.fields * self.visits

    @property
    def objects(self):
        return sum(self.objects_per_field)

    @property
    def forced_sources(self):
        """The expected number of ForcedSource rows."""
        return round(FILL * self.objects * self.visits)


class Catalogue:
    """The rows of a synthetic catalogue of `scale` x Run 1.1 (module docstring), as dicts of arrays."""

    def __init__(self, scale, seed=1):
        self.layout, self.seed = Layout.of(scale), int(seed)
        rng = np.random.default_rng([self.seed, 0])
        n = self.layout.visits
        self.visit_id = 200_000 + np.cumsum(rng.integers(1, 2000, n))
        self.mjd = 59580.0 + np.sort(rng.uniform(0.0, 3650.0, n))
        self.band = rng.choice(len(BANDS), n, p=BAND_SHARE)
        self.airmass = np.minimum(1.0 + rng.exponential(0.15, n), 2.5)
        self.seeing = (0.8 * np.exp(rng.normal(0.0, 0.25, n)) * self.airmass ** 0.6
                       * (WAVELENGTH_NM[self.band] / 620.0) ** -0.2)
        self.zero_point = (ZERO_POINT[self.band] - EXTINCTION[self.band] * (self.airmass - 1.0)
                           + rng.normal(0.0, 0.02, n))
        self.sky = SKY_E[self.band] * np.exp(rng.normal(0.0, 0.3, n))
        self.dither = rng.normal(0.0, 0.02, (n, 2))
        self._truth = {}

    # ---- ids and positions ---------------------------------------------------------------------------

    def centre(self, field):
        """(ra, decl) of a field's footprint, degrees: a grid around the Twinkles field."""
        return 53.0 + 0.25 * (field % 4), -27.44 - 0.25 * (field // 4)

    def ccd_visit_id(self, field, visit):
        return self.visit_id[visit] * 200 + field

    # ---- CcdVisit --------------------------------------------------------------------------------------

    def ccd_visits(self):
        """Every CcdVisit row (a few thousand: one call)."""
        n, f = self.layout.visits, self.layout.fields
        field = np.repeat(np.arange(f), n)
        visit = np.tile(np.arange(n), f)
        ra0, dec0 = self.centre(field)
        sky = self.sky[visit]
        return dict(ccdVisitId=self.ccd_visit_id(field, visit), visitId=self.visit_id[visit],
                    raftName=np.array([RAFTS[(k // 9) % len(RAFTS)] for k in field]),
                    ccdName=np.array([f"S{(k + 4) % 9 // 3}{(k + 4) % 3}" for k in field]),
                    filterName=np.array(list(BANDS))[self.band[visit]], obsStart=self.mjd[visit],
                    expMidpt=self.mjd[visit] + 0.5 * EXPTIME / 86400.0, expTime=np.full(n * f, EXPTIME),
                    ra=ra0 + self.dither[visit, 0], decl=dec0 + self.dither[visit, 1],
                    zenithDistance=np.rad2deg(np.arccos(1.0 / self.airmass[visit])),
                    xSize=np.full(n * f, 4000), ySize=np.full(n * f, 4072), zeroPoint=self.zero_point[visit],
                    seeing=self.seeing[visit], skyBg=sky, skyNoise=np.sqrt(sky + READ_NOISE ** 2),
                    flags=np.zeros(n * f, np.int64))

    # ---- Object ----------------------------------------------------------------------------------------

    def truth(self, field):
        """{objectId, flux (n, 6) nJy, galaxy, variable amplitude, period (d), phase} of a field's Objects."""
        if field not in self._truth:
            rng = np.random.default_rng([self.seed, 1, field])
            n = self.layout.objects_per_field[field]
            oid = ((field + 1) << 42) + np.cumsum(rng.integers(1, 4, n))
            lo, hi = 10 ** (0.3 * 16.0), 10 ** (0.3 * 26.5)       # dN/dm ~ 10^(0.3 m), r = 16 .. 26.5
            r = np.log10(lo + rng.random(n) * (hi - lo)) / 0.3
            mag = np.stack([r + rng.normal(m, s, n) for m, s in COLOURS], axis=1)
            variable = rng.random(n) < 0.03
            self._truth[field] = dict(
                objectId=oid, r=r, flux=10 ** (-0.4 * (mag - 31.4)),
                galaxy=rng.random(n) < np.clip((r - 17.0) / 6.0, 0.1, 0.9),
                amplitude=np.where(variable, rng.uniform(0.05, 0.5, n), 0.0),
                period=10 ** rng.uniform(-0.5, 2.5, n), phase=rng.uniform(0.0, 2 * np.pi, n))
        return self._truth[field]

    def objects(self, field):
        """The Object rows of one field."""
        t = self.truth(field)
        rng = np.random.default_rng([self.seed, 3, field])
        n = len(t["objectId"])
        ra0, dec0 = self.centre(field)
        child = rng.random(n) < 0.12
        parent = np.ma.masked_array(rng.choice(t["objectId"], n), mask=~child)
        sigma0 = 10 ** (-0.4 * (COADD_DEPTH - 31.4)) / 5.0
        sigma = sigma0 * np.sqrt(1.0 + t["flux"] / (25.0 * sigma0))
        flux = t["flux"] + sigma * rng.standard_normal((n, len(BANDS)))
        psf2 = (0.8 / 2.355) ** 2
        size2 = np.where(t["galaxy"], (0.4 * np.exp(rng.normal(0.0, 0.5, n)) * 10 ** (-0.1 * (t["r"] - 22))) ** 2,
                         0.0)
        e1, e2 = np.clip(rng.normal(0.0, 0.2, (2, n)), -0.8, 0.8)
        extendedness = np.where(rng.random(n) < 0.01, np.nan, t["galaxy"].astype(float))
        rows = dict(objectId=t["objectId"], parentObjectId=parent,
                    psRa=ra0 + rng.uniform(-0.5, 0.5, n) * SENSOR_DEG / np.cos(np.deg2rad(dec0)),
                    psDecl=dec0 + rng.uniform(-0.5, 0.5, n) * SENSOR_DEG,
                    extendedness=extendedness, Ixx=psf2 + size2 * (1 + e1), Iyy=psf2 + size2 * (1 - e1),
                    Ixy=size2 * e2, shape_flag=rng.random(n) < 0.03,
                    flags=np.where(rng.random(n) < 0.05, rng.integers(1, 256, n), 0))
        for i, b in enumerate(BANDS):
            rows[f"{b}PsFlux"], rows[f"{b}PsFluxSigma"] = flux[:, i], sigma[:, i]
        return rows

    # ---- ForcedSource ----------------------------------------------------------------------------------

    def forced_sources(self, field, visits):
        """The ForcedSource rows of one field in `visits` (visit indices), visit by visit, each in objectId
        order (as a forced-photometry file holds them)."""
        parts = [self._forced_visit(field, int(v)) for v in visits]
        return {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}

    def _forced_visit(self, field, visit):
        t = self.truth(field)
        rng = np.random.default_rng([self.seed, 2, field, visit])
        keep = np.flatnonzero(rng.random(len(t["objectId"])) < FILL)
        n, b = len(keep), self.band[visit]
        mjd = self.mjd[visit]
        flux = t["flux"][keep, b] * (1.0 + t["amplitude"][keep] * np.sin(
            2 * np.pi * mjd / t["period"][keep] + t["phase"][keep]))
        njy_per_e = 10 ** (-0.4 * (self.zero_point[visit] - 31.4))
        n_eff = 4 * np.pi * (self.seeing[visit] / PIXEL_ARCSEC / 2.355) ** 2     # PSF noise-equivalent pixels
        sigma = njy_per_e * np.sqrt(n_eff * (self.sky[visit] + READ_NOISE ** 2) + np.maximum(flux, 0.0) / njy_per_e)
        ps_flux = flux + sigma * rng.standard_normal(n)
        u = rng.random(n)
        failed = u < 0.002                                   # no measurement: NULL flux, flag bit 4
        ps_flux[failed] = np.nan
        sigma[failed] = np.nan
        flags = np.where(failed, 4, np.where(u > 0.99, 1, 0)).astype(np.int64)
        return dict(objectId=t["objectId"][keep], ccdVisitId=np.full(n, self.ccd_visit_id(field, visit)),
                    psFlux=ps_flux, psFlux_Sigma=sigma, flags=flags)

    def calls(self, visits_per_call=1):
        """(field, visit indices) of each ForcedSource ingest call, as the ingest stage orders them: the visits
        in time order, split evenly into chunks of at most `visits_per_call` (1: one call per CcdVisit, the
        stage's one call per forced file), each chunk field by field."""
        n = self.layout.visits
        for chunk in np.array_split(np.arange(n), -(-n // visits_per_call)):
            for field in range(self.layout.fields):
                yield field, chunk
