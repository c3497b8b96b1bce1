"""Names, dtypes and fill values of the Zarr stores that stages exchange.

One module defines them so that the ingest, inference and mosaic stages, and
users reading the stores, agree on one layout.

Output root of a job (a local folder or an object-store URL)::

    <root>/manifest.json                       run manifest (stages, blocks done)
    <root>/inputs/<observation_id>.zarr        input cube of one observation
    <root>/predictions/<observation_id>.zarr   per-observation predictions
    <root>/mosaic.zarr                         regional composite

Every store is Zarr v3 with the CRS in a ``spatial_ref`` coordinate
(``crs_wkt`` and ``GeoTransform`` attributes) so that
``xr.open_zarr(store, decode_coords="all")`` and rioxarray give the grid back.
"""

from __future__ import annotations

import numpy as np

INPUTS_DIR = "inputs"
PREDICTIONS_DIR = "predictions"
MOSAIC_NAME = "mosaic.zarr"
MANIFEST_NAME = "manifest.json"

# Input cube. Reflectance is stored as int16 of reflectance x 10000: half the
# bytes of float32, and lossless for Sentinel-2 whose DN step is 1e-4
# reflectance. The int16 range covers -3.2768..3.2767, which includes the
# slightly negative values that the L2A offset of -0.1 can produce.
REFLECTANCE_VAR = "reflectance"  # (band, y, x) int16
REFLECTANCE_DTYPE = np.dtype("int16")
REFLECTANCE_SCALE = 1.0e-4
REFLECTANCE_FILL = -32768
CLASSIFICATION_FILL = 255  # categorical bands such as SCL, uint8 (y, x) variables named after the band
WAVELENGTH_COORD = "wavelength_um"  # float64 coordinate along "band"

# Per-observation predictions, all uint8 (y, x) unless noted.
PROBABILITY_FILL = 255
LANDCOVER_PROBABILITY_VAR = "landcover_probability"  # (class, y, x), round(p * 250)
PROBABILITY_SCALE = 250
LANDCOVER_VAR = "landcover"  # argmax class id
LANDCOVER_CONFIDENCE_VAR = "landcover_confidence"  # 0-100, max class probability in percent
CLOUD_PROBABILITY_VAR = "cloud_probability"  # 0-100

# Mosaic layers (uint8 unless noted); nodata is 255 for classes and probabilities.
CLEAR_OBSERVATIONS_VAR = "clear_observations"  # uint16 count, never nodata
VALID_OBSERVATIONS_VAR = "valid_observations"  # uint16 count of observations, clear or cloudy
LANDCOVER_NODATA = 255
