"""Small DICOM series for the tests, built from pydicom's bundled test files (real encoded pixel data of many
transfer syntaxes), and python-gdcm re-encoding for the syntaxes pydicom does not bundle."""

from pathlib import Path

import pydicom
from pydicom import uid
from pydicom.data import get_testdata_file

MR_SMALL = get_testdata_file("MR_small.dcm")   # 64 x 64 MR, explicit VR little endian: the reference pixels


def gdcm_encode(src, dst, syntax: str) -> None:
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, syntax)))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()


def make_series(src, folder: Path, n: int = 3, series_uid: str | None = None, spacing: float = 2.5,
                transfer_syntax=None) -> list[Path]:
    """``n`` slices of one image stacked along its normal, keeping its encoded pixel data."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or uid.generate_uid()
    files = []
    for k in range(n):
        ds = pydicom.dcmread(str(src))
        if transfer_syntax is not None:
            ds.file_meta.TransferSyntaxUID = transfer_syntax
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-10.0, -20.0, 5.0 + spacing * k]
        if "PixelSpacing" not in ds:
            ds.PixelSpacing = [0.5, 0.5]
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = uid.generate_uid()
        ds.InstanceNumber = k + 1
        files.append(folder / f"IM{k:04d}")
        ds.save_as(str(files[-1]), enforce_file_format=True)
    return files
