"""Train the ``fd-medgen`` feature network used by the FD-medgen score of synthesis reports.

A small MONAI Regressor learns, from axial slices of the sample brain (randomly rescaled to
50-100 %, flipped, contrast-jittered), the slice's relative position and its CSF, grey and white
matter fractions. Its pooled convolutional features then describe brain-slice anatomy.
Writes src/napari_medgen/models/builtin/fd-medgen.medgen.pt (about 0.3 MB). Run once, ~2 min on CPU.
"""
import numpy as np
import torch
import torch.nn.functional as F

from napari_medgen.data.normalize import normalize
from napari_medgen.data.slices import fit_to_size
from napari_medgen.models.checkpoint import Model
from napari_medgen.sample_data import brain_t1, brain_tissue
from napari_medgen.tasks.synthesis_report import FEATURES_PATH

SIZE = (120, 104)


def main(steps: int = 600, seed: int = 0) -> None:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    img = normalize(brain_t1().data)
    lab = brain_tissue().data
    x = torch.from_numpy(fit_to_size(img, SIZE))[:, None]
    frac = np.stack([(lab == c).reshape(len(lab), -1).mean(1) for c in (1, 2, 3)], 1) * 5
    y = torch.from_numpy(np.concatenate([np.linspace(-1, 1, len(img))[:, None], frac], 1).astype(np.float32))
    args = {"in_shape": [1, *SIZE], "out_shape": [4], "channels": [16, 32, 64, 16], "strides": [2, 2, 2, 2],
            "num_res_units": 1}
    config = {"task": "features", "name": "fd-medgen", "networks": {"net": {"arch": "Regressor", "args": args}},
              "description": "Feature network of the FD-medgen score (pooled features of Regressor.net)."}
    model = Model(config)
    opt = torch.optim.Adam(model.net.parameters(), lr=1e-3)
    for step in range(steps):
        idx = rng.integers(0, len(x), 16)
        batch = x[idx]
        s = rng.uniform(0.5, 1.0)
        small = F.interpolate(batch, scale_factor=s, mode="bilinear", align_corners=False)
        batch = torch.from_numpy(fit_to_size(small.numpy(), SIZE))
        batch = torch.where(torch.rand(16, 1, 1, 1) < 0.5, batch, batch.flip(-1))
        batch = (batch * torch.empty(16, 1, 1, 1).uniform_(0.8, 1.2)).clamp(0, 1)
        loss = F.mse_loss(model.net(batch), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            print(step, float(loss), flush=True)
    model.net.eval()
    print("saved", model.save(FEATURES_PATH))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
