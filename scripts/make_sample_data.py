"""Build the packaged sample data from nilearn's offline MNI152 2009 template (run once, by hand).

    pip install nilearn && python scripts/make_sample_data.py

Writes ``src/napari_medgen/sample_data/mni152_t1_2mm.nii.gz`` (T1, int16) and
``mni152_tissue_2mm.nii.gz`` (uint8: 0 background, 1 CSF, 2 grey matter, 3 white matter).
The tissue map is the arg-max of the grey- and white-matter probability maps
and a CSF map (brain mask minus GM and WM) inside nilearn's brain mask,
because the shipped GM/WM masks overlap.
"""
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from nilearn import datasets

OUT = Path(__file__).resolve().parents[1] / "src" / "napari_medgen" / "sample_data"


def to_sitk(nifti_img, array):
    """Write through NIfTI so SimpleITK converts nilearn's RAS affine to LPS geometry."""
    tmp = OUT / "_tmp.nii.gz"
    nifti_img.__class__(array, nifti_img.affine).to_filename(tmp)
    img = sitk.ReadImage(str(tmp))
    tmp.unlink()
    return img


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    t1 = datasets.load_mni152_template(resolution=2)
    gm = datasets.load_mni152_gm_template(resolution=2).get_fdata()
    wm = datasets.load_mni152_wm_template(resolution=2).get_fdata()
    mask = datasets.load_mni152_brain_mask(resolution=2).get_fdata() > 0.5
    t1_data = t1.get_fdata()
    t1_int = np.round(t1_data / t1_data.max() * 1000).astype(np.int16)
    csf = np.clip(1.0 - gm - wm, 0, 1)
    tissue = (np.argmax(np.stack([csf, gm, wm]), axis=0) + 1).astype(np.uint8)
    tissue[~mask] = 0
    sitk.WriteImage(to_sitk(t1, t1_int), str(OUT / "mni152_t1_2mm.nii.gz"), True)
    sitk.WriteImage(to_sitk(t1, tissue), str(OUT / "mni152_tissue_2mm.nii.gz"), True)
    print("classes (voxels):", np.bincount(tissue.ravel()))


if __name__ == "__main__":
    main()
