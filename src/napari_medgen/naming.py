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


def distinct(names: list, hints: list) -> list:
    """``names`` made unique: a name several share gets the first of its ``hints`` (per name: e.g. "series 3",
    a UID's end) that tells them apart, else a count, as " (hint)"."""
    out = list(names)
    for name in {n for n in names if names.count(n) > 1}:
        at = [i for i, n in enumerate(names) if n == name]
        for k in range(max((len(hints[i]) for i in at), default=0)):
            tags = [hints[i][k] if k < len(hints[i]) else "" for i in at]
            if all(tags) and len(set(tags)) == len(at):
                break
        else:
            tags = [str(j + 1) for j in range(len(at))]
        for i, tag in zip(at, tags):
            out[i] = f"{name} ({tag})"
    return out
