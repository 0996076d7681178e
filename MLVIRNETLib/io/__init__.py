"""Reading and writing files: images, displacement fields, landmarks, DIR-LAB data.

Holds:
    atomic     atomic output (write beside the target, rename into place on success).
    images     images in NIfTI, NRRD, MHA/MHD, DICOM folders; image <-> tensor.
    fields     ITK displacement fields and transforms <-> :class:`~MLVIRNETLib.core.Deformation`.
    landmarks  DIR-LAB text, Slicer markups (.mrk.json, .fcsv) and CSV landmarks.
    dirlab     DIR-LAB case discovery, raw ``.img`` images and their geometry, 4D-75 landmarks.
    phases     the phases of a 4D-CT on disk (files, a folder, a glob, a 4-D image, DICOM).

May import: :mod:`MLVIRNETLib.core`.
"""
