"""The mask planes of calexps, warps, coadds and the detection coadd: one bit each in a uint16 `mask`
dataset (docs/data-model.md). Every Level 2 module takes its bits from here; the compiled kernels take
them as arguments. The values are part of the data model: products already written depend on them.
"""

#: Saturated: the eimage pixel reached the full well.
SAT = 1
#: Cosmic ray: found and repaired by level2/cosmics.py (the image holds the interpolated value).
CR = 2
#: Within the calibration's edge margin of the sensor border.
EDGE = 4
#: In a detection footprint.
DETECTED = 8
#: No valid pixel: off the input (warp) or no usable input (coadd, detection coadd).
NO_DATA = 16
#: Bad pixel (reserved: no stage sets it yet; every consumer leaves it out).
BAD = 32

#: Plane name -> bit, in bit order.
PLANES = {"SAT": SAT, "CR": CR, "EDGE": EDGE, "DETECTED": DETECTED, "NO_DATA": NO_DATA, "BAD": BAD}

