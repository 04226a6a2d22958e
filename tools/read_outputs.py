#!/usr/bin/env python3
"""Read seamless outputs with tifffile and zarr, as their users will, and print what they see.

    python tools/read_outputs.py OUT.tif OUT.zarr

Prints one JSON object: for the OME-TIFF its array shape, whether tifffile takes it for OME, the
physical pixel size from its OME-XML, the sum of its values, each pyramid level's shape and sum; for the OME-Zarr each multiscale
level's path, shape, scale and sum, the axis units, and the image-label colours. tests/inputs.rs
compares this with what seamless wrote.
"""

import json
import sys

import numpy as np
import tifffile
import zarr


def tiff(path):
    with tifffile.TiffFile(path) as t:
        data = t.asarray()
        ome = tifffile.xml2dict(t.ome_metadata) if t.is_ome else {}
        levels = [{"shape": list(level.shape), "sum": float(np.asarray(level.asarray(), dtype=np.float64).sum())}
                  for level in t.series[0].levels]
    pixels = ome.get("OME", {}).get("Image", {}).get("Pixels", {})
    return {
        "shape": list(data.shape),
        "is_ome": bool(ome),
        "physical_size": [pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeY")],
        "sum": float(np.asarray(data, dtype=np.float64).sum()),
        "levels": levels,
    }


def ome_zarr(path):
    group = zarr.open_group(path, mode="r")
    ome = group.attrs["ome"]
    ms = ome["multiscales"][0]
    levels = []
    for ds in ms["datasets"]:
        a = group[ds["path"]][...]
        scale = next(t["scale"] for t in ds["coordinateTransformations"] if t["type"] == "scale")
        levels.append({"path": ds["path"], "shape": list(a.shape), "scale": scale,
                       "sum": float(np.asarray(a, dtype=np.float64).sum())})
    return {
        "levels": levels,
        "units": [ax.get("unit") for ax in ms["axes"]],
        "colors": len(ome.get("image-label", {}).get("colors", [])),
    }


if __name__ == "__main__":
    print(json.dumps({"tiff": tiff(sys.argv[1]), "zarr": ome_zarr(sys.argv[2])}))
