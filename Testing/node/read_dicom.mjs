// Reads a DICOM SEG and Parametric Maps the way OHIF does (dcmjs and @cornerstonejs/adapters on a Cornerstone3D
// volume's image ids) and writes what it read, for Testing/test_dicom_readers.py to compare voxel by voxel.
//
//   node read_dicom.mjs SOURCE_DIR OUT_DIR SEG.dcm [MAP.dcm ...]
//
// OUT_DIR/read.json: the source's SOP Instance UIDs in the volume's slice order (Cornerstone3D sorts them along
// the slice normal, as OHIF does for a volume), the SEG's segments, and per file the raw file it wrote:
// the SEG as one uint16 label map (segment numbers), each map as float32 values; both slice-major, row-major.
import fs from "node:fs";
import path from "node:path";

import { metaData, utilities, cache } from "@cornerstonejs/core";
import { adaptersPMAP, adaptersSEG } from "@cornerstonejs/adapters";
import dcmjs from "dcmjs";

const [sourceDir, outDir, segFile, ...mapFiles] = process.argv.slice(2);

function readDataset(file) {
  const bytes = fs.readFileSync(file);
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  const message = dcmjs.data.DicomMessage.readFile(buffer);
  return { buffer, dataset: dcmjs.data.DicomMetaDictionary.naturalizeDataset(message.dict) };
}

// The source series' headers, served as OHIF's metadata provider serves them from DICOMweb.
const instances = new Map();
for (const name of fs.readdirSync(sourceDir).sort()) {
  const { dataset } = readDataset(path.join(sourceDir, name));
  instances.set(`mosmos:${name}`, dataset);
}
const numbers = (values) => values.map(Number);
metaData.addProvider((type, imageId) => {
  const ds = instances.get(imageId);
  if (!ds) return undefined;
  const iop = numbers(ds.ImageOrientationPatient);
  switch (type) {
    case "imagePlaneModule":
      return {
        frameOfReferenceUID: ds.FrameOfReferenceUID, rows: ds.Rows, columns: ds.Columns,
        imageOrientationPatient: iop, rowCosines: iop.slice(0, 3), columnCosines: iop.slice(3),
        imagePositionPatient: numbers(ds.ImagePositionPatient), pixelSpacing: numbers(ds.PixelSpacing),
        rowPixelSpacing: Number(ds.PixelSpacing[0]), columnPixelSpacing: Number(ds.PixelSpacing[1]),
        sliceThickness: Number(ds.SliceThickness),
      };
    case "generalImageModule":
      return { sopInstanceUID: ds.SOPInstanceUID, instanceNumber: ds.InstanceNumber };
    case "generalSeriesModule":
      return { seriesInstanceUID: ds.SeriesInstanceUID, modality: ds.Modality };
    case "imagePixelModule":
      return {
        rows: ds.Rows, columns: ds.Columns, bitsAllocated: ds.BitsAllocated, bitsStored: ds.BitsStored,
        highBit: ds.HighBit, pixelRepresentation: ds.PixelRepresentation, samplesPerPixel: ds.SamplesPerPixel,
        photometricInterpretation: ds.PhotometricInterpretation,
      };
    case "instance":
      return ds;
    default:
      return undefined;
  }
}, 10000);

const { sortedImageIds } = utilities.sortImageIdsAndGetSpacing([...instances.keys()]);
const first = instances.get(sortedImageIds[0]);
const sliceLength = first.Rows * first.Columns;
const read = { sop_instance_uids: sortedImageIds.map((id) => instances.get(id).SOPInstanceUID), maps: {} };
fs.mkdirSync(outDir, { recursive: true });

// The SEG as OHIF's cornerstone-dicom-seg extension loads it: one label map image per source image.
const seg = readDataset(segFile);
const segResult = await adaptersSEG.Cornerstone3D.Segmentation.createFromDICOMSegBuffer(
  sortedImageIds, seg.buffer, { metadataProvider: metaData });
const labels = new Uint16Array(sliceLength * sortedImageIds.length);
segResult.labelMapImages.flat().forEach((image, k) => {
  const pixels = image.voxelManager ? image.voxelManager.getScalarData() : image.getPixelData();
  labels.set(pixels, k * sliceLength);
});
fs.writeFileSync(path.join(outDir, "seg.u16"), labels);
read.segments = segResult.segMetadata.data.filter(Boolean).map((s) => ({
  number: s.SegmentNumber, label: s.SegmentLabel,
}));

// Each map as OHIF's cornerstone-dicom-pmap extension loads it: the values the adapter returns become the
// scalars of a volume on the source's sorted image ids.
for (const file of mapFiles) {
  const map = readDataset(file);
  const { pixelData } = await adaptersPMAP.Cornerstone3D.ParametricMap.generateToolState(
    sortedImageIds, map.buffer, metaData);
  const name = path.basename(file, ".dcm");
  fs.writeFileSync(path.join(outDir, `${name}.f32`), new Float32Array(pixelData));
  read.maps[name] = `${name}.f32`;
}
cache.purgeCache();
fs.writeFileSync(path.join(outDir, "read.json"), JSON.stringify(read));
