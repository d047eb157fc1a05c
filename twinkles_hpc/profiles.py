"""Profile constants shared by the renderer (imsim) and the measurement (timedomain's scene models): the
Sersic profiles as mixtures of concentric circular Gaussians fitted by imsim/sersic.py (its docstring says
how and how well)."""
import numpy as np

#: Fitted mixtures, n -> (weights, sigmas / half-light radius), sigmas ascending.
#: Re-derive with `fit_sersic_mixture(1, 6, 0.01, 8.0)` and `fit_sersic_mixture(4, 8, 0.001, 30.0)`.
SERSIC_MIXTURES = {
    1: (np.array([0.00649891, 0.04126751, 0.1523662, 0.33877847, 0.36012683, 0.10096209]),
        np.array([0.12030949, 0.26446384, 0.47265427, 0.76867051, 1.18413242, 1.78242349])),
    4: (np.array([0.02328077, 0.0640603, 0.12533279, 0.18645962, 0.22183003, 0.20122256, 0.12970599,
                  0.04810794]),
        np.array([0.02881718, 0.09016008, 0.21682464, 0.46836583, 0.966047, 1.98001849, 4.19846166,
                  10.15187612])),
}
for _w, _s in SERSIC_MIXTURES.values():
    _w /= _w.sum()           # exact unit flux despite the printed digits


def sersic_mixture(n):
    """(weights, sigmas in half-light radii) of the stored mixture for Sersic index n (1 or 4)."""
    for key, mix in SERSIC_MIXTURES.items():
        if n == key:
            return mix
    raise ValueError(f"Sersic index must be one of {sorted(SERSIC_MIXTURES)}, got {n!r}")
