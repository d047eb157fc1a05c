"""The cadence: Run 1 visit rules, subsampling, and a synthetic Run 1-like visit list.

OpSim output itself is read by twinkles_hpc.sky.opsim.
Units as in twinkles_hpc.sky.visits; see docs/cadence.md.
"""
import numpy as np

from twinkles_hpc.errors import InputError
from twinkles_hpc.instrument import BANDS, FIELD_DEC, FIELD_RA, K_ATM, check_band, fwhm_geom
from twinkles_hpc.sky.ephemeris import (
    altitude, angular_separation, moon_alt_phase, moon_ephemeris, parallactic_angle, sun_altitude)
from twinkles_hpc.sky.visits import DEFAULT_EXPTIME, VISIT_DTYPE

#: Run 1 visit counts per band (SCIENCE.md section 2): the synthetic default.
RUN1_COUNTS = {"u": 254, "g": 195, "r": 196, "i": 195, "z": 195, "y": 192}


def one_per_night_band(visits):
    """Run 1's rule: for each (night, band) keep the visit of lowest airmass (ties: lowest visit_id).

    Returns VISIT_DTYPE sorted by (mjd, visit_id).
    """
    v = np.asarray(visits, dtype=VISIT_DTYPE)
    order = np.lexsort((v["visit_id"], v["airmass"], v["band"], v["night"]))
    v = v[order]
    first = np.ones(v.size, bool)
    first[1:] = (v["night"][1:] != v["night"][:-1]) | (v["band"][1:] != v["band"][:-1])
    v = v[first]
    return v[np.lexsort((v["visit_id"], v["mjd"]))]


def subsample(visits, max_visits):
    """At most `max_visits` visits, deterministic, keeping every band and the band proportions.

    Each band gets a share proportional to its count (largest remainder, at least one), and within
    a band the visits nearest to evenly spaced times between its first and last visit are kept, so
    the subset spans the whole survey. Returns VISIT_DTYPE sorted by (mjd, visit_id).
    """
    v = np.asarray(visits, dtype=VISIT_DTYPE)
    v = v[np.lexsort((v["visit_id"], v["mjd"]))]
    if max_visits >= v.size:
        return v
    bands, counts = np.unique(v["band"], return_counts=True)
    if max_visits < bands.size:
        raise InputError("subsample", "max_visits", f"at least {bands.size} (one visit per band)", max_visits)
    quota = _proportional_quota(counts, max_visits)
    keep = []
    for b, k in zip(bands, quota):
        idx = np.flatnonzero(v["band"] == b)
        keep.append(idx[_spread(v["mjd"][idx], k)])
    return v[np.sort(np.concatenate(keep))]


def _proportional_quota(counts, total):
    """Split `total` over bands in proportion to `counts`, at least 1 and at most count each."""
    ideal = counts * total / counts.sum()
    quota = np.clip(np.floor(ideal).astype(int), 1, counts)
    while quota.sum() < total:      # a few steps at most: largest shortfall first
        quota[np.argmax(np.where(quota < counts, ideal - quota, -np.inf))] += 1
    while quota.sum() > total:      # only after raising small bands to 1
        quota[np.argmin(np.where(quota > 1, ideal - quota, np.inf))] -= 1
    return quota


def _spread(t, k):
    """Indices of k distinct entries of sorted times `t`, nearest to k evenly spaced times."""
    if k >= t.size:
        return np.arange(t.size)
    target = np.linspace(t[0], t[-1], k)
    near = np.clip(np.searchsorted(t, target), 1, t.size - 1)
    near -= (target - t[near - 1]) < (t[near] - target)
    # Push collisions forward, and back from the end, so that the k indices are distinct.
    j = np.arange(k)
    chosen = np.maximum.accumulate(np.maximum(near - j, 0)) + j
    return np.minimum(chosen, t.size - k + j)


# ------------------------------------------------------------------------ synthetic cadence
# Every number below was fitted to the Run 1 visit list (shared/data/twinkles_run1_opsim_visits.csv,
# kraken_1042 fieldID 1427) unless it says otherwise; docs/cadence.md gives the comparison.
_STAGE_CADENCE = 0xCADE           # random-stream key of this stage, with the run seed
_TWILIGHT_ALT = -12.0             # deg; Run 1 sunAlt never exceeds -12.95
_MAX_AIRMASS = 1.5                # DDF airmass limit; 99.8% of Run 1 visits are below it
# A night counts if dark & X < 1.5 lasts this long (hours): longer when the field rises during
# the night than when it is already up at dusk. The shortest windows of Run 1 nights are 4.25 h
# and 3.33 h: every season runs from about 1 Sep to mid-Jan, as in Run 1.
_MIN_WINDOW_RISING_H, _MIN_WINDOW_AT_DUSK_H = 4.2, 3.3
_GRID_MIN = 5.0                   # minutes; time grid on which the nightly windows are found
# Hours from the window opening to the first visit, lognormal (median, sigma_ln): Run 1 u nights
# have median 0.80 h (5-95% 0.43-1.9 h), sequence nights 0.90 h (10-90% 0.43-2.6 h).
_DELAY_U, _DELAY_SEQ = (0.80, 0.45), (0.90, 0.80)
#: Minutes after the sequence start of each band on a multi-band night: Run 1's r, g, i, z, y
#: order with its median offsets. u is observed alone, on dark nights.
_SEQUENCE_MIN = {"r": 0.0, "g": 8.0, "i": 22.0, "z": 39.5, "y": 53.5}
_U_AFTER_SEQUENCE_MIN = 67.0      # only where a u visit must share a night with the sequence
# Moon preference of the nights: relative weight against moon phase (percent illuminated), the
# Run 1 histograms divided by those of the observable nights. u takes new moon (weight falling
# linearly to 0 at 27%: every Run 1 u visit has moonPhase < 26.6, 76% below 10%). The sequence
# avoids new moon (left to u: 1 of 196 r visits below 10%) and, when the moon is up at its
# start, a bright moon (Run 1: 61% of r visits at phase > 90% had the moon up, against 95% of
# the observable nights).
_U_MAX_MOON_PHASE = 27.0
_SEQ_MOON_DOWN = ([0.0, 5.0, 30.0, 100.0], [0.03, 0.03, 1.0, 1.0])
_SEQ_MOON_UP = ([0.0, 10.0, 30.0, 75.0, 85.0, 100.0], [0.03, 0.1, 0.6, 1.0, 0.3, 0.05])
# Seeing: the zenith FWHM at 500 nm, s, is gamma-distributed, one value per night (fit to Run 1
# rawSeeing: shape 13.2, scale 0.0466 arcsec, median 0.60; KS distance 0.04, a lognormal's 0.06).
# FWHMeff = 1.16 sqrt((0.4 X^0.6)^2 + 1.04 (s (lam/500)^-0.3 X^0.6)^2) (SMTN-002 / OpSim v3)
# reproduces Run 1's FWHMeff from rawSeeing and airmass to 0.3%.
_SEEING_SHAPE, _SEEING_SCALE = 13.2, 0.0466
_LAMBDA_EFF_NM = {"u": 368.48, "g": 480.20, "r": 623.12, "i": 754.17, "z": 869.05, "y": 973.64}  # OpSim v3
# Sky: dark sky S0 (mag/arcsec^2 at zenith) brightening as X 10^(-0.4 k (X - 1)), plus moonlight
# from Krisciunas & Schaefer (1991, PASP 103, 1033) scaled by 10^logc, with k an effective
# scattering coefficient and the moon counted down to 10 deg below the horizon (OpSim v3 did:
# without it the 5-10% of Run 1 visits with a bright moon just set are off by 1-2 mag). Fitted
# per band to Run 1 (soft-L1 loss); sigma is the residual's scaled MAD. OpSim v3 held the y sky
# at 17.3 (188 of Run 1's 192 y visits), so y is that constant.
_SKY = {  # band: (S0, logc, k, sigma)
    "u": (22.241, -10.229, 0.242, 0.007),
    "g": (21.989, -10.579, 0.257, 0.015),
    "r": (21.288, -10.847, 0.363, 0.036),
    "i": (20.219, -10.546, 0.393, 0.047),
    "z": (19.425, -10.252, 0.419, 0.040),
}
_Y_SKY = 17.3
_MOON_BELOW_HORIZON = 10.0        # deg
#: Cm of the SMTN-002 m5 formula that reproduces Run 1's fiveSigmaDepth (median of
#: m5 - formula, with kAtm from instrument.K_ATM; rms per visit u 0.03, g 0.03, r 0.02, i 0.01,
#: z 0.007, y 0.001 mag). 0.01-0.11 mag above SMTN-002's bare Cm (u 23.09 g 24.42 r 24.44
#: i 24.32 z 24.16 y 23.73): OpSim v3 used older throughputs.
CM_RUN1 = {"u": 23.18, "g": 24.53, "r": 24.49, "i": 24.36, "z": 24.19, "y": 23.74}
# rotTelPos: before transit about N(5, 32) deg within the +-90 deg rotator limit, after transit 0
# (Run 1: 1005 visits east of the meridian, none at 0; 222 west, 97% at 0). rotSkyPos =
# rotTelPos - parallactic angle, exact for every Run 1 visit.
_ROT_TEL_MEAN, _ROT_TEL_SD = 5.0, 32.0


def five_sigma_depth(band, fwhm_eff, sky_brightness, airmass, exptime=DEFAULT_EXPTIME, cm=CM_RUN1):
    """SMTN-002 point-source 5-sigma depth (AB mag) of one visit.

    m5 = Cm + 0.50 (msky - 21) + 2.5 log10(0.7 / FWHMeff) + 1.25 log10(t / 30) - km (X - 1),
    with FWHMeff in arcsec, msky in mag/arcsec^2, t in seconds, km = instrument.K_ATM.
    """
    return (cm[band] + 0.5 * (np.asarray(sky_brightness) - 21.0) + 2.5 * np.log10(0.7 / np.asarray(fwhm_eff))
            + 1.25 * np.log10(np.asarray(exptime) / 30.0) - K_ATM[band] * (np.asarray(airmass) - 1.0))


def sky_brightness(band, airmass, moon_alt, moon_phase, moon_sep):
    """Sky surface brightness (mag/arcsec^2) of the Run 1 sky model, without its scatter.

    `moon_alt` and `moon_sep` (Moon to field) in degrees, `moon_phase` in percent illuminated.
    """
    if check_band(band) == "y":
        return np.full(np.shape(airmass), _Y_SKY)
    s0, logc, k, _ = _SKY[band]
    x = np.asarray(airmass, dtype=np.float64)
    dark = 10.0 ** (-0.4 * s0) * x * 10.0 ** (-0.4 * k * (x - 1.0))
    alpha = np.degrees(np.arccos(np.clip(2.0 * np.asarray(moon_phase) / 100.0 - 1.0, -1.0, 1.0)))
    lunar = 10.0 ** (-0.4 * (3.84 + 0.026 * alpha + 4e-9 * alpha ** 4))    # K&S: vs phase angle
    rho = np.asarray(moon_sep, dtype=np.float64)
    scatter = 10.0 ** 5.36 * (1.06 + np.cos(np.radians(rho)) ** 2) + 10.0 ** (6.15 - rho / 40.0)
    alt = np.asarray(moon_alt) + _MOON_BELOW_HORIZON
    x_moon = 1.0 / np.sqrt(1.0 - 0.96 * np.cos(np.radians(np.clip(alt, 0.0, 90.0))) ** 2)
    # Moonlight extinguished on its way down, then scattered into the line of sight (K&S 1991).
    moon = scatter * lunar * 10.0 ** (-0.4 * k * x_moon) * (1.0 - 10.0 ** (-0.4 * k * x))
    moon = np.where(alt > 0, moon, 0.0)
    return -2.5 * np.log10(dark + 10.0 ** logc * moon)


def _observable_nights(start_mjd, years, ra, dec):
    """Nights when (ra, dec) is below airmass 1.5 in astronomical darkness long enough.

    Returns (night number, window start MJD, window end MJD); nights count from the one that
    contains `start_mjd`, rolling over at noon UTC.
    """
    noon0 = np.floor(start_mjd - 0.5) + 0.5
    n_nights = int(np.ceil(years * 365.25)) + 1
    step = _GRID_MIN / 1440.0
    t = noon0 + np.arange(n_nights)[:, None] + np.arange(int(1440 / _GRID_MIN))[None, :] * step
    sun_alt = sun_altitude(t)
    alt, _ = altitude(t, ra, dec)
    ok = (sun_alt < _TWILIGHT_ALT) & (alt > np.degrees(np.arcsin(1.0 / _MAX_AIRMASS)))
    ok &= (t >= start_mjd) & (t < start_mjd + years * 365.25)
    first = np.argmax(ok, axis=1)
    at_dusk = sun_alt[np.arange(n_nights), np.maximum(first - 1, 0)] >= _TWILIGHT_ALT
    good = ok.sum(1) * _GRID_MIN / 60.0 >= np.where(at_dusk, _MIN_WINDOW_AT_DUSK_H, _MIN_WINDOW_RISING_H)
    last = ok.shape[1] - 1 - np.argmax(ok[:, ::-1], axis=1)
    nights = np.flatnonzero(good)
    return nights, t[nights, first[nights]], t[nights, last[nights]]


def _check_counts(counts):
    counts = dict(RUN1_COUNTS if counts is None else counts)
    for b, n in counts.items():
        if b not in BANDS:
            raise InputError("synthetic_cadence", "counts", f"bands from {BANDS}", b)
        if int(n) != n or n < 0:
            raise InputError("synthetic_cadence", f"counts[{b}]", "a non-negative integer", n)
    return {b: int(counts.get(b, 0)) for b in BANDS}


def synthetic_cadence(seed, *, years=10.0, start_mjd=59580.0, ra=FIELD_RA, dec=FIELD_DEC, counts=None):
    """A parametric deep-drilling cadence that mimics Twinkles Run 1 (the embedded default).

    One visit per (night, band) at most, 30 s exposures, on nights when the field (ra, dec in
    degrees) is observable in darkness; u alone on dark nights (moon < 27% illuminated), the
    other bands as one r-g-i-z-y sequence per night. Seeing, airmass, rotator angle, moon, sky
    brightness and depth follow the Run 1 models above. `counts` maps band -> number of visits
    (default RUN1_COUNTS), `years` is the survey length from `start_mjd`. Deterministic in
    `seed`. Returns VISIT_DTYPE sorted by (mjd, visit_id); visit_id counts 1, 2, ... in time.
    """
    counts = _check_counts(counts)
    rng = np.random.default_rng([int(seed), _STAGE_CADENCE])
    nights, w0, w1 = _observable_nights(start_mjd, years, ra, dec)
    n_cand = nights.size
    seq_bands = [b for b in _SEQUENCE_MIN if counts[b] > 0]
    n_seq = max((counts[b] for b in seq_bands), default=0)
    if max(n_seq, counts["u"]) > n_cand:
        raise InputError("synthetic_cadence", "years", f"a span with at least {max(n_seq, counts['u'])} observable "
                         f"nights (one night per visit of the busiest band; {years} yr has {n_cand})", years)

    # Draws over all candidate nights, in a fixed order, so the result depends on the seed alone.
    gauss = rng.standard_normal(n_cand)
    delay_u, delay_seq = (med / 24.0 * np.exp(sig * gauss) for med, sig in (_DELAY_U, _DELAY_SEQ))
    u_key, seq_key = 1.0 - rng.random(n_cand), 1.0 - rng.random(n_cand)    # in (0, 1]
    seeing = rng.gamma(_SEEING_SHAPE, _SEEING_SCALE, n_cand)

    # Weighted sampling without replacement (Efraimidis & Spirakis 2006: smallest -log(U)/w).
    # Weights grow with the window's length: Run 1 has more visits in Nov-Dec than in Sep.
    hours = (w1 - w0) * 24.0
    _, phase0 = moon_alt_phase(np.minimum(w0 + delay_u, w1))
    u_weight = hours * np.clip(1.0 - phase0 / _U_MAX_MOON_PHASE, 0.0, None)
    u_key = np.where(u_weight > 0, -np.log(u_key) / np.maximum(u_weight, 1e-300), np.inf)
    u_nights = np.lexsort((phase0, u_key))[:counts["u"]]   # past the dark nights: least lit first
    taken = np.zeros(n_cand, bool)
    taken[u_nights] = True
    moon_alt1, phase1 = moon_alt_phase(np.minimum(w0 + delay_seq, w1))
    weight = np.where(moon_alt1 > 0, np.interp(phase1, *_SEQ_MOON_UP), np.interp(phase1, *_SEQ_MOON_DOWN))
    seq_key = -np.log(seq_key) / (hours * weight)
    seq_nights = np.lexsort((seq_key, taken))[:n_seq]      # nights left by u first

    night_idx, bands, offset = [u_nights], [np.full(u_nights.size, "u")], [np.zeros(u_nights.size)]
    shared = np.isin(u_nights, seq_nights)
    offset[0][shared] = _U_AFTER_SEQUENCE_MIN
    for b in seq_bands:
        on = np.ones(n_seq, bool)
        on[rng.choice(n_seq, n_seq - counts[b], replace=False)] = False   # nights this band skips
        night_idx.append(seq_nights[on])
        bands.append(np.full(on.sum(), b))
        offset.append(np.full(on.sum(), _SEQUENCE_MIN[b]))
    night_idx, bands = np.concatenate(night_idx), np.concatenate(bands)
    offset = np.concatenate(offset) / 1440.0

    # Start each night's block after the window opens, early enough for the block to finish in it.
    span = np.zeros(n_cand)
    np.maximum.at(span, night_idx, offset)
    delay = np.where(np.isin(np.arange(n_cand), seq_nights), delay_seq, delay_u)
    start = np.clip(w0 + delay, w0, np.maximum(w1 - span - 30.0 / 86400.0, w0))
    mjd = start[night_idx] + offset
    n = mjd.size

    v = np.zeros(n, VISIT_DTYPE)
    v["mjd"], v["band"], v["night"], v["exptime"] = mjd, bands, nights[night_idx], DEFAULT_EXPTIME
    v["ra"], v["dec"] = ra % 360.0, dec
    alt, ha = altitude(mjd, ra, dec)
    v["airmass"] = 1.0 / np.sin(np.radians(alt))
    lam = np.array([_LAMBDA_EFF_NM[b] for b in bands])
    x06 = v["airmass"] ** 0.6
    atm = seeing[night_idx] * (lam / 500.0) ** -0.3 * x06
    v["fwhm_eff"] = 1.16 * np.sqrt((0.4 * x06) ** 2 + 1.04 * atm ** 2)
    v["fwhm_geom"] = fwhm_geom(v["fwhm_eff"])
    rot_tel = np.where(np.sin(ha) < 0, np.clip(rng.normal(_ROT_TEL_MEAN, _ROT_TEL_SD, n), -90.0, 90.0), 0.0)
    v["rot_sky_pos"] = (rot_tel - parallactic_angle(ha, dec)) % 360.0
    v["moon_alt"], v["moon_phase"], moon_ra, moon_dec = moon_ephemeris(mjd)
    moon_sep = angular_separation(ra, dec, moon_ra, moon_dec)
    noise = rng.standard_normal(n)
    for b in BANDS:
        m = bands == b
        sigma = _SKY[b][3] if b in _SKY else 0.0
        v["sky_brightness"][m] = sky_brightness(b, v["airmass"][m], v["moon_alt"][m], v["moon_phase"][m],
                                                moon_sep[m]) + sigma * noise[m]
        v["five_sigma_depth"][m] = five_sigma_depth(b, v["fwhm_eff"][m], v["sky_brightness"][m],
                                                    v["airmass"][m], v["exptime"][m])
    v = v[np.argsort(mjd, kind="stable")]
    v["visit_id"] = np.arange(1, n + 1)
    return v
