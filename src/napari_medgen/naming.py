"""What file names say: which are images (by extension) and their names without it, which say "labels" (one
rule for the reader, the panels and the batch verbs)."""
import re

EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")  # volumes and DICOM
PICTURES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")  # 2D pictures (X-ray exports, frames of a series)

# label maps and masks: label/mask/seg ending a word of the name (t1_seg, Labels01, labelmap, brainmask, aseg,
# segmented, sub-01_dseg), not inside one (Seguin_T1, T1_masked, unlabelled, Delabel)
LABEL_NAME = re.compile(r"(?:^|[^a-z])(?:labels?(?:maps?)?|[a-z]*masks?|[a-z]*seg(?:mentation|mented)?s?)(?:[^a-z]|$)",
                        re.IGNORECASE)


def image_stem(name: str) -> str:
    """``name`` less its image extension (".nii.gz", ".dcm", ".png", ...); other dots stay ("echo.1")."""
    low = name.lower()
    return next((name[: -len(e)] for e in sorted(EXTENSIONS + PICTURES, key=len, reverse=True) if low.endswith(e)),
                name)
