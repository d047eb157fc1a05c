"""Simulate one visit's eimage: select the sources on the sensor, render them in chunks with
mid-visit checkpoints, add sky and noise, write the HDF5 (and optionally FITS) output atomically.

Rendering is deterministic and the noise is counter-based (keyed by run seed, visit id and stage);
cosmic rays are added after the noise, from their own key (run seed, visit id, STAGE_COSMIC_RAYS). So
the eimage is bit-identical whatever rank runs it and however often the visit was interrupted.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass

import numpy as np

from twinkles_hpc import __version__, instrument, steptimer
from twinkles_hpc.errors import Interrupted
from twinkles_hpc.imsim import cosmics as _cosmics
from twinkles_hpc.imsim import noise as _noise
from twinkles_hpc.imsim.psf import PSFModel
from twinkles_hpc.imsim.render import render_galaxies, render_points
from twinkles_hpc.imsim.wcs import SensorWCS
from twinkles_hpc.store import fitsimage
from twinkles_hpc.store.atomic import atomic_h5, open_read

STAGE_NOISE = 1
STAGE_POINTING = 2
STAGE_COSMIC_RAYS = 3
#: Extra margin (pixels) around the sensor inside which sources are still rendered: their light
#: spills onto the sensor. Galaxies also get 8 half-light radii.
EDGE_MARGIN_PIX = 32


@dataclass
class VisitSpec:
    """Everything that defines one visit's image (from the cadence and the config)."""
    visit_id: int
    band: str
    mjd: float
    exptime: float
    airmass: float
    fwhm_eff: float
    fwhm_geom: float
    sky_brightness: float
    five_sigma_depth: float
    rot_sky_pos: float
    ra: float
    dec: float

    @classmethod
    def from_row(cls, row, exptime_override=0.0):
        g = {k: row[k].item() if hasattr(row[k], "item") else row[k] for k in cls.__dataclass_fields__}
        g["band"] = str(g["band"])
        if exptime_override:
            g["exptime"] = float(exptime_override)
        return cls(**g)


@dataclass
class SourceList:
    """Sources on one visit's sensor in pixel coordinates, fluxes in electrons, in render order."""
    x: np.ndarray
    y: np.ndarray
    kind: np.ndarray          # 0 point, 1 galaxy
    flux: np.ndarray          # point flux; for galaxies the bulge flux
    flux2: np.ndarray         # disk flux (galaxies)
    shape: np.ndarray         # (n, 6): bulge hlr, q, pa, disk hlr, q, pa

    def __len__(self):
        return len(self.x)


def _extinction(band, airmass):
    return 10.0 ** (-0.4 * instrument.K_ATM[band] * (airmass - 1.0))


def select_sources(stars, galaxies, spec: VisitSpec, wcs: SensorWCS, variables=None, var_mags=None):
    """Project the catalogue onto the sensor and keep what can put light on it.

    Render order: stars, galaxies, variable point sources (supernovae, lensed quasar images), each in
    catalogue order. `var_mags` are the variables' AB magnitudes in this visit (inf: no light).
    Returns the SourceList and the boolean selections (stars, galaxies, variables) of the catalogue.
    """
    b, t = spec.band, spec.exptime
    ext = _extinction(b, spec.airmass)
    xs, ys = wcs.sky_to_pixel(stars["ra"], stars["dec"])
    on = _on_sensor(xs, ys, wcs, EDGE_MARGIN_PIX)
    sflux = instrument.counts_from_mag(stars[f"mag_{b}"][on], b, t) * ext
    xg, yg = wcs.sky_to_pixel(galaxies["ra"], galaxies["dec"])
    reach = EDGE_MARGIN_PIX + 8.0 * np.maximum(galaxies["bulge_hlr"], galaxies["disk_hlr"]) / wcs.scale
    gon = _on_sensor(xg, yg, wcs, reach)
    g = galaxies[gon]
    bflux = np.nan_to_num(instrument.counts_from_mag(g[f"bulge_mag_{b}"], b, t) * ext, posinf=0.0)
    dflux = np.nan_to_num(instrument.counts_from_mag(g[f"disk_mag_{b}"], b, t) * ext, posinf=0.0)
    if variables is None or len(variables) == 0:
        von = np.zeros(0, bool)
        xv = yv = vflux = np.zeros(0)
    else:
        xv, yv = wcs.sky_to_pixel(variables["ra"], variables["dec"])
        von = _on_sensor(xv, yv, wcs, EDGE_MARGIN_PIX) & np.isfinite(var_mags)
        xv, yv = xv[von], yv[von]
        vflux = instrument.counts_from_mag(var_mags[von], b, t) * ext
    n_s, n_g, n_v = int(on.sum()), len(g), int(von.sum())
    shape = np.zeros((n_s + n_g + n_v, 6))
    shape[n_s:n_s + n_g] = np.column_stack([g["bulge_hlr"], g["bulge_q"], g["bulge_pa"],
                                            g["disk_hlr"], g["disk_q"], g["disk_pa"]])
    src = SourceList(
        x=np.concatenate([xs[on], xg[gon], xv]), y=np.concatenate([ys[on], yg[gon], yv]),
        kind=np.concatenate([np.zeros(n_s, np.int8), np.ones(n_g, np.int8), np.zeros(n_v, np.int8)]),
        flux=np.concatenate([sflux, bflux, vflux]), flux2=np.concatenate([np.zeros(n_s), dflux, np.zeros(n_v)]),
        shape=shape)
    return src, {"stars": on, "galaxies": gon, "variables": von}


def _on_sensor(x, y, wcs, margin):
    return ((x > -0.5 - margin) & (x < wcs.nx - 0.5 + margin)
            & (y > -0.5 - margin) & (y < wcs.ny - 0.5 + margin))


def variable_counts(variables, var_mags, on_sensor, m5):
    """Supernovae and lensed images with light on the sensor, and supernovae with a point-source
    SNR > 5 estimated from the visit's 5-sigma depth (SNR = 5 x 10^(-0.4 (m - m5)))."""
    if variables is None or len(variables) == 0:
        return dict(n_supernovae=0, n_supernovae_snr5=0, n_lensed_images=0)
    kind, m = variables["kind"][on_sensor], var_mags[on_sensor]
    sn = kind == 1
    return dict(n_supernovae=int(sn.sum()), n_supernovae_snr5=int((sn & (m < m5)).sum()),
                n_lensed_images=int((kind == 2).sum()))


def render_chunk(image, src: SourceList, sl: slice, psf: PSFModel, jacobian):
    """Add sources src[sl] to the float64 image (expected electrons)."""
    k = src.kind[sl]
    x, y, f, f2, sh = src.x[sl], src.y[sl], src.flux[sl], src.flux2[sl], src.shape[sl]
    pt = k == 0
    if pt.any():
        render_points(image, x[pt], y[pt], f[pt], psf)
    gal = ~pt
    if gal.any():
        s = sh[gal]
        render_galaxies(image, x[gal], y[gal], f[gal], s[:, 0], s[:, 1], s[:, 2],
                        f2[gal], s[:, 3], s[:, 4], s[:, 5], jacobian, psf)


def true_pointing(spec: VisitSpec, cfg):
    """Where the telescope really pointed: the cadence's (nominal) pointing plus a pointing error
    (Gaussian, `imsim.pointing_error` arcsec per axis) and a rotator error (`imsim.rotation_error`
    arcsec), keyed by (run seed, visit id, STAGE_POINTING). The image is rendered with the true WCS;
    the eimage header carries the nominal one, which Level 2 calibrates against its reference stars."""
    g = np.random.default_rng([cfg.run.seed, spec.visit_id, STAGE_POINTING]).standard_normal(3)
    e = cfg.visit.pointing_error / 3600.0
    dec = spec.dec + g[1] * e
    ra = spec.ra + g[0] * e / np.cos(np.deg2rad(dec))
    rot = spec.rot_sky_pos + g[2] * cfg.visit.rotation_error / 3600.0
    return dataclasses.replace(spec, ra=float(ra), dec=float(dec), rot_sky_pos=float(rot))


def make_psf(spec: VisitSpec, sensor, imsim_cfg):
    return PSFModel(spec.fwhm_geom, pixel_scale=sensor.pixel_scale, nx=sensor.nx, ny=sensor.ny,
                    fwhm_gradient=imsim_cfg.psf_fwhm_gradient, ellip_gradient=imsim_cfg.psf_ellip_gradient)


class VisitCheckpoint:
    """Partial image after `next_chunk` chunks, written atomically; the noise key is its random state."""

    def __init__(self, path, signature, noise_key):
        self.path, self.signature, self.noise_key = path, signature, noise_key

    def load(self, shape):
        if not os.path.exists(self.path):
            return None, 0
        with open_read(self.path) as fh:
            if fh.attrs.get("signature") != self.signature or fh["image"].shape != shape:
                return None, 0       # made by another config: start the visit afresh
            return fh["image"][...], int(fh.attrs["next_chunk"])

    def save(self, image, next_chunk):
        with atomic_h5(self.path) as fh:
            fh.create_dataset("image", data=image)
            fh.attrs["signature"] = self.signature
            fh.attrs["next_chunk"] = next_chunk
            fh.attrs["noise_key"] = np.asarray(self.noise_key, dtype=np.int64)

    def remove(self):
        if os.path.exists(self.path):
            os.remove(self.path)


def simulate_visit(spec: VisitSpec, stars, galaxies, cfg, out_path, ckpt_path, should_stop=lambda: False,
                   log=None, variables=None, var_mags=None, instcat_path=None, on_chunk=None, on_checkpoint=None):
    """Render, add noise and write one eimage. Returns {path: bytes} of what it wrote.

    `variables` (twinkles_hpc.sky.variables.VARIABLE_DTYPE) with `var_mags`, their magnitudes in this
    visit, add the supernovae and lensed quasar images. With `instcat_path`, the visit's PhoSim
    instance catalogue is written too. Raises Interrupted after writing a checkpoint when
    should_stop() turns true between chunks. on_chunk(k), when given, is called after chunk k of several
    and returns True to force a checkpoint; on_checkpoint(k) after that checkpoint is written (the test
    seams of twinkles_hpc.testing.faults).
    """
    sensor, im = cfg.sensor, cfg.visit
    lap = steptimer.laps()
    true = true_pointing(spec, cfg)
    wcs = SensorWCS(true.ra, true.dec, true.rot_sky_pos, sensor.nx, sensor.ny, sensor.pixel_scale)
    nominal = SensorWCS(spec.ra, spec.dec, spec.rot_sky_pos, sensor.nx, sensor.ny, sensor.pixel_scale)
    psf = make_psf(spec, sensor, im)
    if variables is None:
        variables, var_mags = _no_variables(), np.zeros(0)
    src, sel = select_sources(stars, galaxies, spec, wcs, variables, var_mags)
    lap("select")
    n_chunks = max(1, -(-len(src) // im.chunk_objects))
    key = (cfg.run.seed, spec.visit_id, STAGE_NOISE)
    signature = json.dumps({"config": cfg.fingerprint(), "visit": spec.visit_id, "n_src": len(src),
                            "n_chunks": n_chunks})
    ckpt = VisitCheckpoint(ckpt_path, signature, key)
    image, start = ckpt.load((sensor.ny, sensor.nx))
    if image is None:
        image = np.zeros((sensor.ny, sensor.nx), dtype=np.float64)
    elif log:
        log(f"visit {spec.visit_id}: resuming at chunk {start}/{n_chunks}")
    last_ckpt = time.time()
    for c in range(start, n_chunks):
        sl = slice(c * im.chunk_objects, (c + 1) * im.chunk_objects)
        render_chunk(image, src, sl, psf, wcs.jacobian)
        if c + 1 == n_chunks:
            break
        forced = bool(on_chunk(c + 1)) if on_chunk else False
        stop = should_stop()
        if stop or time.time() - last_ckpt >= im.checkpoint_interval or forced:
            ckpt.save(image, c + 1)
            last_ckpt = time.time()
            if on_checkpoint:
                on_checkpoint(c + 1)
            if stop:
                raise Interrupted(f"visit {spec.visit_id} checkpointed at chunk {c + 1}/{n_chunks}")
    lap("render")
    sky_e = _noise.sky_electrons(spec.sky_brightness, spec.band, spec.exptime,
                                 pixel_scale=sensor.pixel_scale, dark_current=sensor.dark_current)
    crs, n_tracks = np.zeros(0, _cosmics.COSMIC_RAY_DTYPE), 0
    if im.noise:
        pixels, n_sat = _noise.add_sky_and_noise(image, sky_e, sensor.read_noise, key,
                                                 full_well=sensor.full_well)
        if im.cosmic_ray_rate > 0:
            crs, n_tracks = _cosmics.simulate_cosmic_rays(im.cosmic_ray_rate, spec.exptime, sensor.nx, sensor.ny,
                                                          (cfg.run.seed, spec.visit_id, STAGE_COSMIC_RAYS))
            n_sat += _cosmics.add_cosmic_rays(pixels, crs, sensor.full_well)
    else:
        pixels, n_sat = (image + sky_e).astype(np.float32), 0
    lap("noise")
    meta = dict(visit_id=spec.visit_id, band=spec.band, mjd=spec.mjd, exptime=spec.exptime,
                airmass=spec.airmass, fwhm_eff=spec.fwhm_eff, fwhm_geom=spec.fwhm_geom,
                sky_brightness=spec.sky_brightness, rot_sky_pos=spec.rot_sky_pos, ra=spec.ra, dec=spec.dec,
                sky_e=sky_e, read_noise=sensor.read_noise, full_well=sensor.full_well, gain=instrument.GAIN,
                zeropoint=instrument.ZEROPOINT[spec.band], n_saturated=n_sat, n_sources=len(src),
                n_cosmic_rays=n_tracks, n_cosmic_ray_pixels=len(crs),
                **variable_counts(variables, var_mags, sel["variables"], spec.five_sigma_depth),
                seed=cfg.run.seed, run_name=cfg.run.name, software=f"twinkles-hpc {__version__}")
    meta.update(true_ra=true.ra, true_dec=true.dec, true_rot_sky_pos=true.rot_sky_pos,
                true_wcs=wcs.header_string())
    written = write_eimage(out_path, pixels, meta, nominal, psf, im.compression, cosmic_rays=crs)
    lap("write")
    if instcat_path:
        from twinkles_hpc.imsim.instcat_write import write_visit_catalog
        v = sel["variables"]
        write_visit_catalog(instcat_path, true, cfg.run.seed, stars[sel["stars"]], galaxies[sel["galaxies"]],
                            variables[v], var_mags[v])
        written[instcat_path] = os.path.getsize(instcat_path)
    if im.fits:
        fits_path = os.path.splitext(out_path)[0] + ".fits"
        written[fits_path] = export_fits(out_path, fits_path)
    ckpt.remove()
    return written


def _no_variables():
    from twinkles_hpc.sky.variables import VARIABLE_DTYPE
    return np.zeros(0, dtype=VARIABLE_DTYPE)


def write_eimage(path, pixels, meta, wcs: SensorWCS, psf: PSFModel, compression="none", cosmic_rays=None):
    """The eimage file (docs/data-model.md); `cosmic_rays` (COSMIC_RAY_DTYPE) goes to the truth dataset
    `truth/cosmic_rays`, which Level 2 never reads."""
    comp = {} if compression == "none" else {"compression": compression, "shuffle": True}
    ny, nx = pixels.shape
    chunks = (min(ny, 256), min(nx, 4096)) if comp else None
    with atomic_h5(path) as fh:
        fh.create_dataset("image", data=pixels, chunks=chunks, **comp)
        fh["image"].attrs["unit"] = "electron"
        for k, v in meta.items():
            fh.attrs[k] = v
        fh.attrs["wcs"] = wcs.header_string()
        fh.attrs["psf"] = json.dumps(psf.to_dict())
        if cosmic_rays is not None:
            fh.create_dataset("truth/cosmic_rays", data=cosmic_rays)
            fh["truth/cosmic_rays"].attrs["unit"] = "electron"
    return {path: os.path.getsize(path)}


FITS_CARDS = {"visit_id": "VISITID", "band": "FILTER", "mjd": "MJD-OBS", "exptime": "EXPTIME",
              "airmass": "AIRMASS", "fwhm_eff": "FWHMEFF", "fwhm_geom": "FWHMGEOM",
              "sky_brightness": "SKYBRITE", "rot_sky_pos": "ROTSKYPO", "ra": "RA", "dec": "DEC",
              "sky_e": "SKYLEVEL", "read_noise": "RDNOISE", "full_well": "SATURATE", "gain": "GAIN",
              "zeropoint": "ZPT1ES", "n_saturated": "NSATUR", "n_sources": "NSOURCES", "seed": "SEED"}


def write_fits(path, pixels, meta, wcs_header):
    """Write pixels as a FITS primary HDU with the WCS (a header string) and the visit metadata; returns
    bytes. The file is the one astropy.io.fits would write (store/fitsimage.py), without importing astropy."""
    cards = fitsimage.cards_of(wcs_header)
    for k, key in FITS_CARDS.items():
        if k in meta:
            v = meta[k]
            cards.append(fitsimage.card(key, v.item() if hasattr(v, "item") else v))
    cards.append(fitsimage.card("BUNIT", "electron"))
    cards.append(fitsimage.card("ORIGIN", str(meta.get("software", "twinkles-hpc"))))
    fitsimage.write_image(path, pixels, cards)
    return os.path.getsize(path)


def export_fits(h5_path, fits_path):
    """Write an eimage HDF5 file as FITS with its WCS (astropy and DS9 read it). Returns bytes."""
    with open_read(h5_path) as fh:
        data = fh["image"][...]
        meta = dict(fh.attrs)
    return write_fits(fits_path, data, meta, meta.pop("wcs"))
