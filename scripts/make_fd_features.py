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
from napari_medgen.engine.fit import Budget, TrainTask, fit
from napari_medgen.models.checkpoint import Model
from napari_medgen.models.config import FeaturesParams, ModelConfig, NetSpec, Task
from napari_medgen.sample_data import brain_t1, brain_tissue
from napari_medgen.tasks.synthesis_report import FEATURES_PATH

SIZE = (120, 104)


class FeatureTask(TrainTask):
    """Regress slice position and tissue fractions from rescaled, flipped, contrast-jittered slices."""

    def __init__(self, net, x, y, seed):
        self.networks = {"net": net}
        self.optimizers = [torch.optim.Adam(net.parameters(), lr=1e-3)]
        self.x, self.y, self.rng = x, y, np.random.default_rng(seed)

    def train_step(self, step):
        idx = self.rng.integers(0, len(self.x), 16)
        small = F.interpolate(self.x[idx], scale_factor=self.rng.uniform(0.5, 1.0), mode="bilinear",
                              align_corners=False)
        batch = torch.from_numpy(fit_to_size(small.numpy(), SIZE))
        batch = torch.where(torch.rand(16, 1, 1, 1) < 0.5, batch, batch.flip(-1))
        batch = (batch * torch.empty(16, 1, 1, 1).uniform_(0.8, 1.2)).clamp(0, 1)
        loss = F.mse_loss(self.model()(batch), self.y[idx])
        opt = self.optimizers[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss}


def main(steps: int = 600, seed: int = 0) -> None:
    torch.manual_seed(seed)
    img = normalize(brain_t1().data)
    lab = brain_tissue().data
    x = torch.from_numpy(fit_to_size(img, SIZE))[:, None]
    frac = np.stack([(lab == c).reshape(len(lab), -1).mean(1) for c in (1, 2, 3)], 1) * 5
    y = torch.from_numpy(np.concatenate([np.linspace(-1, 1, len(img))[:, None], frac], 1).astype(np.float32))
    args = {"in_shape": [1, *SIZE], "out_shape": [4], "channels": [16, 32, 64, 16], "strides": [2, 2, 2, 2],
            "num_res_units": 1}
    model = Model(ModelConfig(task=Task.FEATURES, name="fd-medgen", networks={"net": NetSpec("Regressor", args)},
                              params=FeaturesParams(size=list(SIZE)),
                              description="Feature network of the FD-medgen score (pooled features of Regressor.net)."))
    history = fit(FeatureTask(model.net, x, y, seed), Budget(steps=steps), device="cpu", schedule=None,
                  progress=lambda ev: ev.step % 100 == 0 and print(ev.step, ev.metrics.get("loss"), flush=True))
    print("last loss", history["loss"][-1])
    model.net.eval()
    print("saved", model.save(FEATURES_PATH))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
