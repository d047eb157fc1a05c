"""`twinkles-hpc imsim INSTCAT -o OUT`: render one sensor from a PhoSim instance catalogue, as PhoSim's
own command line does for a single chip (our sensor model: R22_S11 centred on the boresight).

Supported objects: `point` and `sersic2d` (index 1 or 4), with magnitudes from magNorm and the SED
(a flat SED gives magNorm in every band), weak-lensing gamma1/gamma2/kappa and delta RA/Dec offsets
(radians, as PhoSim reads them). Atmospheric extinction k (X - 1) uses the airmass of the header's altitude.
"""
from __future__ import annotations

import os
import time

import numpy as np

from twinkles_hpc import instrument
from twinkles_hpc.errors import InputError
from twinkles_hpc.imsim import noise as _noise
from twinkles_hpc.imsim.noise import MU_MAX
from twinkles_hpc.imsim.psf import PSFModel
from twinkles_hpc.imsim.render import render_points, render_sersic
from twinkles_hpc.imsim.visit import EDGE_MARGIN_PIX, write_eimage, write_fits
from twinkles_hpc.imsim.wcs import SensorWCS
from twinkles_hpc.sky.instcat import read_instance_catalog


#: The render options (`twinkles-hpc imsim`'s): name -> (type, lo, hi, lower limit excluded, option, expected).
OPTION_LIMITS = {
    "nx": (int, 1, 16384, False, "--nx", "an integer in [1, 16384] (pixels)"),
    "ny": (int, 1, 16384, False, "--ny", "an integer in [1, 16384] (pixels)"),
    "seed": (int, -2 ** 63, 2 ** 63 - 1, False, "--seed", "an integer in [-2**63, 2**63)"),
    "sky_mag": (float, 10.0, 30.0, False, "--sky-mag", "a number in [10, 30] (mag/arcsec^2)"),
    "exptime": (float, 0.0, 3600.0, True, "--exptime", "a positive number up to 3600 (s)"),
    "fwhm": (float, 0.0, 10.0, True, "--fwhm", "a positive number up to 10 (arcsec)"),
    "pixel_scale": (float, 0.0, 10.0, True, "pixel_scale", "a positive number up to 10 (arcsec/pixel)"),
}
#: Output formats by file name ending: HDF5 eimage, else FITS.
HDF5_SUFFIXES, FITS_SUFFIXES = (".h5", ".hdf5"), (".fits", ".fit", ".fts")


def check_option(name, value):
    """The number a render option stands for (`value`: a number or its text), within OPTION_LIMITS;
    anything else is an InputError naming the option."""
    kind, lo, hi, lo_open, label, expected = OPTION_LIMITS[name]
    try:
        v = kind(value)
        if kind is int and not isinstance(value, (int, str, np.integer)) and v != value:
            v = None                                   # 64.5 is not a pixel count
    except (TypeError, ValueError, OverflowError):
        v = None
    if v is None or isinstance(value, bool) or not ((lo < v if lo_open else lo <= v) and v <= hi):
        raise InputError("imsim", label, expected, value)     # NaN fails every comparison
    return v


def check_output(output):
    """The output path: a FITS or HDF5 name that is not a directory."""
    output = os.fspath(output)
    if not output.endswith(HDF5_SUFFIXES + FITS_SUFFIXES):
        raise InputError("imsim", "-o", "a file name ending in " + ", ".join(FITS_SUFFIXES + HDF5_SUFFIXES), output)
    if os.path.isdir(output):
        raise InputError("imsim", "-o", "a file name, not a directory", output)
    return output


def _check_seds(cat):
    """Every object's SED name and redshift must be known to the SED models (sky/seds.py); the first
    bad object is named by file, line and id."""
    from twinkles_hpc.sky.seds import REDSHIFT_RANGE, parse_sed
    o = cat.objects
    bad = []
    for name in np.unique(o["sed"]):
        try:
            parse_sed(name)
        except InputError as e:
            bad.append(name)
            expected = e.expected
    if bad:
        i = int(np.argmax(np.isin(o["sed"], bad)))
        raise InputError(cat.origin(i), f"object {o['id'][i]} SEDFILE", expected, str(o["sed"][i]))
    lo, hi = REDSHIFT_RANGE
    out = ~((o["redshift"] >= lo) & (o["redshift"] <= hi))
    if out.any():
        i = int(np.argmax(out))
        raise InputError(cat.origin(i), f"object {o['id'][i]} redshift", f"{lo:g} <= z <= {hi:g} (the SED models)",
                         float(o["redshift"][i]))


def _check_fluxes(cat, index, flux, mags, mu, band, exptime):
    """A source may put at most MU_MAX expected electrons on the sensor (the noise model's limit)."""
    bright = ~(np.isfinite(flux) & (flux <= MU_MAX))
    if bright.any():
        j = int(np.argmax(bright))
        i = int(index[j])
        raise InputError(cat.origin(i), f"object {cat.objects['id'][i]} magNorm",
                         f"a source of at most {MU_MAX:.3g} electrons in {exptime:g} s",
                         f"{band} = {mags[j]:.2f} AB with magnification {mu[j]:.3g}: {flux[j]:.3g} electrons")


def _magnitudes(objs, band):
    from twinkles_hpc.sky.seds import sed_magnitude
    mags = np.empty(len(objs))
    cache = {}
    for i, o in enumerate(objs):
        key = (str(o["sed"]), float(o["redshift"]))
        if key not in cache:          # colour of (sed, z) is independent of magNorm
            cache[key] = sed_magnitude(key[0], 0.0, key[1], band)
        mags[i] = cache[key] + o["mag_norm"]
    return mags


def _lensed_ellipse(a, b, pa_deg, g1, g2, kappa):
    """Apply the weak-lensing Jacobian to a source ellipse (semi-axes a, b, PA east of north).

    The image covariance is A^-1 C A^-T with A = [[1-k-g1, -g2], [-g2, 1-k+g1]] in (east, north)
    coordinates; returns the image's semi-axes and PA.
    """
    t = np.deg2rad(pa_deg)
    u = np.stack([np.sin(t), np.cos(t)], -1)           # major axis direction (east, north)
    v = np.stack([np.cos(t), -np.sin(t)], -1)
    C = a[:, None, None] ** 2 * u[:, :, None] * u[:, None, :] + b[:, None, None] ** 2 * v[:, :, None] * v[:, None, :]
    A = np.empty((len(a), 2, 2))
    A[:, 0, 0], A[:, 0, 1] = 1 - kappa - g1, -g2
    A[:, 1, 0], A[:, 1, 1] = -g2, 1 - kappa + g1
    Ai = np.linalg.inv(A)
    Ci = Ai @ C @ np.swapaxes(Ai, 1, 2)
    w, vec = np.linalg.eigh(Ci)
    major = vec[:, :, 1]
    pa = np.rad2deg(np.arctan2(major[:, 0], major[:, 1])) % 180.0
    return np.sqrt(w[:, 1]), np.sqrt(w[:, 0]), pa


def render_instance_catalog(path, output, *, nx=instrument.SENSOR_NX, ny=instrument.SENSOR_NY, seed=None,
                            noise=True, sky_mag=None, exptime=None, fwhm=None,
                            pixel_scale=instrument.PIXEL_SCALE):
    t0 = time.perf_counter()
    nx, ny, pixel_scale = check_option("nx", nx), check_option("ny", ny), check_option("pixel_scale", pixel_scale)
    seed, sky_mag, exptime, fwhm = (None if v is None else check_option(k, v) for k, v in
                                    (("seed", seed), ("sky_mag", sky_mag), ("exptime", exptime), ("fwhm", fwhm)))
    output = check_output(output)
    path = os.fspath(path)
    cat = read_instance_catalog(path)
    band = cat.band
    exptime = exptime if exptime is not None else cat.exptime
    fwhm = fwhm if fwhm is not None else cat.seeing_fwhm
    if not (fwhm and fwhm > 0):
        raise InputError(path, "header seeing", "a positive FWHM (seeing, FWHMeff or FWHMgeom) or --fwhm",
                         fwhm)
    if not (exptime and exptime > 0):
        raise InputError(path, "header vistime", "a positive exposure time or --exptime", exptime)
    sky_mag = instrument.DARK_SKY_MAG[band] if sky_mag is None else sky_mag
    o = cat.objects
    bad = (o["source_type"] == "sersic2d") & ~(np.isclose(o["sersic_n"], 1) | np.isclose(o["sersic_n"], 4))
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(cat.origin(i), f"object {o['id'][i]} sersic2d index",
                         "1 or 4 (exponential or de Vaucouleurs)", float(o["sersic_n"][i]))
    _check_seds(cat)
    wcs = SensorWCS(cat.ra, cat.dec, cat.rot_sky_pos, nx, ny, pixel_scale)
    x, y = wcs.sky_to_pixel(o["ra"] + np.rad2deg(o["dra"]), o["dec"] + np.rad2deg(o["ddec"]))
    reach = EDGE_MARGIN_PIX + 8.0 * o["major_arcsec"] / pixel_scale
    on = (x > -0.5 - reach) & (x < nx - 0.5 + reach) & (y > -0.5 - reach) & (y < ny - 0.5 + reach)
    o, x, y = o[on], x[on], y[on]
    mu = 1.0 / np.abs((1 - o["kappa"]) ** 2 - o["gamma1"] ** 2 - o["gamma2"] ** 2)
    extinction = 10.0 ** (-0.4 * instrument.K_ATM[band] * (cat.airmass - 1.0))
    mags = _magnitudes(o, band)
    flux = instrument.counts_from_mag(mags, band, exptime) * mu * extinction
    _check_fluxes(cat, np.flatnonzero(on), flux, mags, mu, band, exptime)
    psf = PSFModel(fwhm, pixel_scale=pixel_scale, nx=nx, ny=ny)
    image = np.zeros((ny, nx))
    pt = o["source_type"] == "point"
    render_points(image, x[pt], y[pt], flux[pt], psf)
    g = ~pt
    if g.any():
        og = o[g]
        a, b, pa = _lensed_ellipse(og["major_arcsec"], og["minor_arcsec"], og["pa_deg"], og["gamma1"],
                                   og["gamma2"], og["kappa"])
        render_sersic(image, x[g], y[g], flux[g], og["sersic_n"].round(), a, b / a, pa, wcs.jacobian, psf)
    sky_e = _noise.sky_electrons(sky_mag, band, exptime, pixel_scale=pixel_scale)
    visit_id = int(cat.obshistid or 0)
    if noise and not image.max(initial=0.0) <= MU_MAX:
        raise InputError(path, "objects", f"at most {MU_MAX:.3g} electrons in any pixel (overlapping bright "
                         "sources)", float(image.max()))
    if noise:
        key = (int(seed if seed is not None else cat.seed if cat.seed is not None else visit_id), visit_id, 1)
        pixels, n_sat = _noise.add_sky_and_noise(image, sky_e, instrument.READ_NOISE, key)
    else:
        pixels, n_sat = (image + sky_e).astype(np.float32), 0
    meta = dict(visit_id=visit_id, band=band, mjd=cat.mjd, exptime=exptime, fwhm_geom=fwhm,
                sky_brightness=sky_mag, rot_sky_pos=cat.rot_sky_pos, ra=cat.ra, dec=cat.dec, sky_e=sky_e,
                read_noise=instrument.READ_NOISE, full_well=instrument.FULL_WELL, gain=instrument.GAIN,
                zeropoint=instrument.ZEROPOINT[band], n_saturated=n_sat, n_sources=int(on.sum()),
                software="twinkles-hpc imsim", instcat=os.path.abspath(path))
    if output.endswith((".h5", ".hdf5")):
        write_eimage(output, pixels, meta, wcs, psf)
    else:
        write_fits(output, pixels, meta, wcs.header_string())
    return dict(n_objects=len(cat.objects), n_on_sensor=int(on.sum()), band=band, visit_id=visit_id,
                seconds=time.perf_counter() - t0)
