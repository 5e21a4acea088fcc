"""DICOM decoders for `mosmos segment DICOM_DIR`: decode time of the real 20-slice JPEG 2000 CT series
(Testing/Data/totalseg_example/example_ct_dicom) per backend, as ratios against the named baseline
pydicom + Pillow (what MOSMOS used before issue 20), and which transfer syntaxes each backend decodes.

Backends: pydicom + pylibjpeg (libjpeg / openjpeg / rle plugins), pydicom + python-gdcm, SimpleITK's
GDCM series reader. Backends that are not installed are reported as such.

    python benchmarks/bench_dicom_decode.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

SERIES = Path(__file__).resolve().parents[1] / "Testing/Data/totalseg_example/example_ct_dicom"


def pydicom_decode(plugin: str):
    import pydicom
    from pydicom.pixels import pixel_array

    files = sorted(SERIES.iterdir())
    return lambda: np.stack([pixel_array(pydicom.dcmread(f), decoding_plugin=plugin) for f in files])


def simpleitk_decode():
    import SimpleITK as sitk

    def run():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(SERIES)))
        # Rescaled to HU and sorted along the slice normal, so the pixels are not compared with the baseline.
        return sitk.GetArrayFromImage(reader.Execute())
    return run


def best_of(run, repeat: int) -> tuple[float, np.ndarray]:
    out, best = None, float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - t)
    return best, out


def coverage() -> None:
    from pydicom import uid
    from pydicom.pixels import get_decoder

    syntaxes = {"implicit LE": uid.ImplicitVRLittleEndian, "explicit LE": uid.ExplicitVRLittleEndian,
                "explicit BE": uid.ExplicitVRBigEndian, "deflated LE": uid.DeflatedExplicitVRLittleEndian,
                "RLE": uid.RLELossless, "JPEG baseline": uid.JPEGBaseline8Bit, "JPEG extended": uid.JPEGExtended12Bit,
                "JPEG lossless P14": uid.JPEGLossless, "JPEG lossless SV1": uid.JPEGLosslessSV1,
                "JPEG-LS lossless": uid.JPEGLSLossless, "JPEG-LS near-lossless": uid.JPEGLSNearLossless,
                "JPEG 2000 lossless": uid.JPEG2000Lossless, "JPEG 2000": uid.JPEG2000}
    print("\ntransfer syntax coverage (pydicom decoder plugins available in this environment):")
    for name, ts in syntaxes.items():
        dec = get_decoder(ts)
        plugins = sorted(dec.available_plugins) if dec is not None else []
        native = "native" if ts in (uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian, uid.ExplicitVRBigEndian,
                                    uid.DeflatedExplicitVRLittleEndian) else ""
        print(f"  {name:24s} {native or ', '.join(plugins) or 'NONE'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    backends = {"pydicom+pillow (baseline)": lambda: pydicom_decode("pillow"),
                "pydicom+pylibjpeg": lambda: pydicom_decode("pylibjpeg"),
                "pydicom+gdcm": lambda: pydicom_decode("gdcm"),
                "SimpleITK GDCM series": simpleitk_decode}
    results, reference = {}, None
    for name, make in backends.items():
        try:
            seconds, array = best_of(make(), args.repeat)
        except Exception as e:  # a backend that is not installed or cannot decode this syntax
            print(f"{name:28s} unavailable ({type(e).__name__}: {str(e).splitlines()[0][:80]})")
            continue
        if reference is None:
            reference = array
        same = array.dtype == reference.dtype and np.array_equal(array, reference)
        results[name] = seconds
        print(f"{name:28s} {seconds * 1000:8.1f} ms for {len(array)} slices   same pixels as baseline: {same}")
    base = results.get("pydicom+pillow (baseline)")
    if base:
        print("\nratio to pydicom+pillow (lower is faster):")
        for name, seconds in results.items():
            print(f"  {name:28s} {seconds / base:.2f}")
    coverage()


if __name__ == "__main__":
    main()
