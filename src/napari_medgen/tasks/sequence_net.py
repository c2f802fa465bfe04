"""The CNN + LSTM sequence network as three checkpointed parts, and its forward pass.

``net``: a MONAI ``Regressor`` that encodes one frame (two channels: the frame and its
subtraction from the first frame, as in DCE reading) into a feature vector;
``rnn``: an ``LSTM`` (optionally bidirectional) that reads the frames in order;
``head``: a ``Linear`` layer applied to the LSTM's final state (the sequence's
answer) and to its output at every frame (the per-frame curve).  Without ``rnn``
the frame features are averaged (the order-blind baseline).

The "fraction" readout answers ``(largest - smallest) / largest`` of a positive per-frame
value (the head at every frame), as an ejection fraction is read from the end-diastolic
and end-systolic volumes; its per-frame curve is that value relative to its maximum.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..errors import UserError
from ..models.config import NetSpec


def sequence_networks(size: list, n_out: int, *, features: int = 64, hidden: int = 64,
                      channels: tuple = (16, 32, 64, 64), bidirectional: bool = False,
                      recurrent: bool = True) -> dict:
    """NetSpecs of the encoder, the LSTM and the head for frames of ``size``."""
    strides = [2 if s >= 8 * 2 ** i else 1 for i, s in enumerate([min(size)] * len(channels))]
    specs = {"net": NetSpec("Regressor", {"in_shape": [2, *size], "out_shape": [features],
                                          "channels": list(channels), "strides": strides,
                                          "num_res_units": 1, "norm": "BATCH"})}
    width = features
    if recurrent:
        specs["rnn"] = NetSpec("LSTM", {"input_size": features, "hidden_size": hidden, "batch_first": True,
                                        "bidirectional": bidirectional})
        width = hidden * (2 if bidirectional else 1)
    specs["head"] = NetSpec("Linear", {"in_features": width, "out_features": n_out})
    return specs


READOUTS = ("final", "fraction")


def run_sequence(nets: dict, x: torch.Tensor, lengths: torch.Tensor,
                 readout: str = "final") -> tuple[torch.Tensor, torch.Tensor]:
    """(sequence outputs (B, K), per-frame outputs (B, T, K)) for padded frames ``x`` (B, T, *S)."""
    b, t = x.shape[:2]
    keep = torch.arange(t, device=x.device)[None] < lengths.to(x.device)[:, None]  # (B, T): real frames
    channels = torch.stack([x, x - x[:, :1]], 2)[keep]  # each frame and its subtraction from the first
    enc = nets["net"](channels).float()  # padding frames are never encoded (no batch-norm pollution)
    enc = F.layer_norm(enc, enc.shape[-1:])  # bounded LSTM inputs: its gates do not saturate
    feats = enc.new_zeros((b, t, enc.shape[-1]))
    feats[keep] = enc
    valid = keep.float()[..., None]
    rnn: Optional[torch.nn.LSTM] = nets.get("rnn")
    if rnn is None:
        per_frame = feats
        pooled = (feats * valid).sum(1) / valid.sum(1)
    else:
        packed = pack_padded_sequence(feats, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, (h_n, _c) = rnn(packed)
        per_frame, _ = pad_packed_sequence(out, batch_first=True, total_length=t)
        pooled = torch.cat(list(h_n[-(2 if rnn.bidirectional else 1):]), -1)  # last layer, both directions
    head = nets["head"]
    if readout == "fraction":
        return _fraction(F.softplus(head(per_frame)) + 1e-3, keep)
    return head(pooled), head(per_frame) * valid


def _fraction(volume: torch.Tensor, keep: torch.Tensor, sharpness: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """((largest - smallest) / largest (B, 1), volume / max (B, T, 1)) of a positive (B, T, 1) per-frame value.

    Largest and smallest are log-mean-exp of the relative volume (temperature ``sharpness``): between
    the mean and the true extreme, exact for a constant curve, and every frame near an extreme gets
    gradient (a hard max/min trains erratically)."""
    top = volume[..., 0].masked_fill(~keep, 0.0).amax(1, keepdim=True)
    rel = volume[..., 0] / top
    log_n = keep.sum(1).float().log()

    def soft_max(x):
        return sharpness * (torch.logsumexp((x / sharpness).masked_fill(~keep, float("-inf")), 1) - log_n)

    hi, lo = soft_max(rel), -soft_max(-rel)
    return ((hi - lo) / hi)[:, None], (rel * keep)[..., None]


def transfer_encoder(encoder: torch.nn.Module, source) -> int:
    """Copy every tensor of ``source`` (a Model or module) whose name and shape fit the encoder; returns the count."""
    modules = list(source.networks.values()) if hasattr(source, "networks") else [source]
    own = encoder.state_dict()
    taken = {}
    for module in modules:
        for name, tensor in module.state_dict().items():
            if name in own and name not in taken and own[name].shape == tensor.shape:
                taken[name] = tensor
    if not any(own[k].ndim > 1 for k in taken):  # no convolution or linear weight: nothing learned came over
        raise UserError("The pretrained model's encoder does not fit the sequence model's frame encoder "
                        "(different architecture or frame size); train without it or use a matching model.")
    encoder.load_state_dict({**own, **taken})
    return len(taken)
