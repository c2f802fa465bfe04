"""Which file names say "labels": one rule for the reader (Labels layer or Image) and the batch verbs (skip)."""
import re

# label maps and masks: label/mask/seg ending a word of the name (t1_seg, Labels01, labelmap, brainmask, aseg,
# segmented, sub-01_dseg), not inside one (Seguin_T1, T1_masked, unlabelled, Delabel)
LABEL_NAME = re.compile(r"(?:^|[^a-z])(?:labels?(?:maps?)?|[a-z]*masks?|[a-z]*seg(?:mentation|mented)?s?)(?:[^a-z]|$)",
                        re.IGNORECASE)
