"""People's own scans: the ``lungseg segment`` command and what it needs beyond the course.

The course core (``lungseg_utils``) reads NIfTI on the 64^3 grid and the native grid; this
wing reads what a clinic exports, writes what a clinic reads, and checks what it writes.
It imports the core, never the other way. Imports only go down this list:

``dicom``      a CT series from a folder of DICOM files -> (HU, affine), the largest series
``rtstruct``   expert contours from a DICOM RTSTRUCT, filled into a mask
``reader``     any scan: NIfTI file, case folder or DICOM folder -> (HU, affine, header, info)
``outputs``    output paths checked before any work; a scan's files all or none
``sides``      the right and the left lung: a lung mask split by the patient's side
``quality``    a segmented scan's volumes, right/left and quality flag
``dicom_seg``  the mask as a DICOM Segmentation object (highdicom)
``runtime``    the ensemble built once and traced once: a scan at the warm speed
``openvino_ir`` the ensemble exported once to OpenVINO: scans without TensorFlow
``segment``    the inference command: a scan in; masks, summary, flag out
``lctsc``      the whole LCTSC from TCIA, converted into this project's layouts
``browser``    the viewer app's case browser: any scan, segmented on demand
``export_ir``  the ``lungseg export-ir`` command: a model exported to OpenVINO once
"""
