"""DICOM files for tests: the package's own encoder, so tests and the phantom share one copy.

``write_dicom(path, pixels, jpeg=True)`` writes what the SIIM download holds (8-bit
MONOCHROME2, JPEG Baseline, SOPInstanceUID = ImageId); without ``jpeg`` uncompressed data
of any bit depth, optionally MONOCHROME1 or with a rescale. ``write_apple_double`` writes
a macOS ``._<name>`` junk file. See :mod:`pneumolib.data.phantom.dicom`.
"""

from pneumolib.data.phantom.dicom import CR_IMAGE_STORAGE, jpeg_bytes, write_apple_double, write_dicom

__all__ = ["CR_IMAGE_STORAGE", "jpeg_bytes", "write_apple_double", "write_dicom"]
