"""PhoSim instance catalogue of one simulated visit: the sources on the sensor, as the run renders them.

Object ids are the catalogue id x 10 + component: 0 star, 1 bulge, 2 disk, 3 supernova, 4 lensed
quasar image. Stars and galaxy components carry their SED and magNorm (PhoSim convention, see
docs/sky.md); variable sources (supernovae, lensed images) carry a flat SED whose magNorm is their
magnitude in this visit's band at this visit's MJD, magnification included.
"""
import numpy as np

from twinkles_hpc.instrument import BAND_INDEX
from twinkles_hpc.sky.instcat import INSTCAT_OBJECT_DTYPE, write_instance_catalog

COMPONENT = {"star": 0, "bulge": 1, "disk": 2, "supernova": 3, "lensed_image": 4}


def visit_header(spec, seed):
    alt = np.rad2deg(np.arcsin(1.0 / max(spec.airmass, 1.0)))
    return {"rightascension": repr(spec.ra), "declination": repr(spec.dec), "mjd": repr(spec.mjd),
            "altitude": repr(float(alt)), "filter": str(BAND_INDEX[spec.band]),
            "rotskypos": repr(spec.rot_sky_pos), "FWHMeff": repr(spec.fwhm_eff),
            "FWHMgeom": repr(spec.fwhm_geom), "vistime": repr(spec.exptime), "nsnap": "1",
            "obshistid": str(spec.visit_id), "seed": str(seed)}


def _rows(n):
    o = np.zeros(n, dtype=INSTCAT_OBJECT_DTYPE)
    o["dust_rest"] = o["dust_lab"] = "none"
    return o


def visit_objects(stars, galaxies, variables, var_mags):
    """Object rows for stars, galaxy bulges and disks (components with light only) and variables."""
    parts = []
    s = _rows(len(stars))
    s["id"], s["ra"], s["dec"] = stars["id"] * 10 + COMPONENT["star"], stars["ra"], stars["dec"]
    s["mag_norm"], s["sed"], s["source_type"] = stars["mag_norm"], stars["sed"], "point"
    parts.append(s)
    for comp, n in (("bulge", 4.0), ("disk", 1.0)):
        g = galaxies[np.isfinite(galaxies[f"{comp}_mag_norm"])]
        o = _rows(len(g))
        o["id"], o["ra"], o["dec"] = g["id"] * 10 + COMPONENT[comp], g["ra"], g["dec"]
        o["mag_norm"], o["sed"], o["redshift"] = g[f"{comp}_mag_norm"], g[f"{comp}_sed"], g["redshift"]
        o["source_type"], o["sersic_n"] = "sersic2d", n
        o["major_arcsec"] = g[f"{comp}_hlr"]
        o["minor_arcsec"] = g[f"{comp}_hlr"] * g[f"{comp}_q"]
        o["pa_deg"] = g[f"{comp}_pa"]
        parts.append(o)
    lit = np.isfinite(var_mags)
    v = _rows(int(lit.sum()))
    comp = np.where(variables["kind"][lit] == 1, COMPONENT["supernova"], COMPONENT["lensed_image"])
    v["id"] = variables["source_id"][lit] * 10 + comp
    v["ra"], v["dec"], v["mag_norm"] = variables["ra"][lit], variables["dec"][lit], var_mags[lit]
    v["sed"], v["source_type"] = "flatSED", "point"
    parts.append(v)
    return np.concatenate(parts)


def write_visit_catalog(path, spec, seed, stars, galaxies, variables, var_mags):
    objs = visit_objects(stars, galaxies, variables, var_mags)
    write_instance_catalog(path, visit_header(spec, seed), objs)
    return len(objs)
