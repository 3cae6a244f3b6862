"""The built-in digits classifier: a small CNN on 8x8 handwritten digits, its feature space and its metrics.

Its penultimate activations (64-d) are the `digits` feature space of the extractor registry, the built-in
counterpart of Inception-v3 pool3 for the built-in digits models; its softmax gives the classifier metrics
(accuracy of class-conditional samples against the labels they were asked for). The weights ship in
diffbench/models/builtin/ (trained by benchmarks/train_digits.py on the training split of scikit-learn's
digits) and are checked against their sha256 in checkpoints.toml before use, like any checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diffbench.errors import ConfigError

CLASSIFIER_ENTRY = "digits-classifier"  # its checkpoints.toml entry
FEATURE_DIM = 64
NUM_CLASSES = 10
RESOLUTION = 8


class DigitsNet(nn.Module):
    """uint8-scaled input x in [-1, 1] of shape [B, 1, 8, 8] -> (features [B, 64], logits [B, 10]).

    Three 3x3 convolutions (32, 64, 64 channels; max-pool to 4x4 after the second), a 128-unit hidden layer
    and a 64-unit penultimate layer (ReLU), then a linear read-out to the ten classes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, FEATURE_DIM)
        self.out = nn.Linear(FEATURE_DIM, NUM_CLASSES)
        self.dropout = nn.Dropout(0.3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.relu(self.conv3(h))
        h = self.dropout(F.relu(self.fc1(h.flatten(1))))
        features = F.relu(self.fc2(h))
        return features, self.out(self.dropout(features))


def images_to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, C, 8, 8] (C 1 or 3; RGB is averaged to grey) -> float32 [B, 1, 8, 8] in [-1, 1]."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        got = f"{images.dtype} {list(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ConfigError(f"the digits classifier takes uint8 images [B, 1, 8, 8], got {got}")
    if images.shape[1] not in (1, 3) or tuple(images.shape[2:]) != (RESOLUTION, RESOLUTION):
        raise ConfigError(
            f"the digits classifier takes 8x8 images with 1 or 3 channels, got {list(images.shape[1:])} "
            "(the digits feature space is for the built-in 8x8 digits models)"
        )
    x = images.to(torch.float32)
    if x.shape[1] == 3:
        x = x.mean(dim=1, keepdim=True)
    return x / 127.5 - 1.0


class DigitsClassifier:
    """The `digits` feature extractor: uint8 images -> 64-d penultimate features, and 10-class logits.

    `id` is "digits-cnn@" + the first 12 hex digits of the weights' sha256, so statistics made with other
    weights never mix with these.
    """

    dim = FEATURE_DIM

    def __init__(self, *, device: torch.device | str = "cpu", weights_path: str | os.PathLike | None = None):
        from diffbench.models.statedict import check_keys, read_state_dict

        if weights_path is None:
            from diffbench.models.registry import fetch_file

            path, sha = fetch_file(CLASSIFIER_ENTRY)  # the shipped file, its sha256 verified
        else:
            from diffbench.models.fetch import sha256_file

            path = Path(weights_path)
            if not path.is_file():
                from diffbench.errors import ModelLoadError

                raise ModelLoadError(f"digits classifier weights not found: {path}")
            sha = sha256_file(path)
        state = read_state_dict(Path(path))
        net = DigitsNet()
        check_keys(net, state, what="the digits classifier")
        net.load_state_dict(state)
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.weights_sha256 = sha
        self.id = f"digits-cnn@{sha[:12]}"

    def _run(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images_to_input(images).to(self.device)
        with torch.no_grad():
            return self.net(x)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, 64] float32 of uint8 images [B, C, 8, 8]."""
        return self._run(images)[0]

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits [B, 10] of uint8 images [B, C, 8, 8]."""
        return self._run(images)[1]

    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both at once (the registry's protocol for extractors that also classify)."""
        return self._run(images)

    def predict(self, images: torch.Tensor, *, batch: int = 1000) -> torch.Tensor:
        """Predicted classes [B] (int64) of uint8 images, in batches."""
        out = [self.logits(images[i : i + batch]).argmax(dim=1).cpu() for i in range(0, len(images), batch)]
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


_DEFAULT: dict[str, DigitsClassifier] = {}


def digits_classifier(device: torch.device | str = "cpu") -> DigitsClassifier:
    """The shipped classifier, loaded once per device."""
    key = str(torch.device(device))
    if key not in _DEFAULT:
        _DEFAULT[key] = DigitsClassifier(device=device)
    return _DEFAULT[key]


@dataclass(frozen=True)
class Accuracy:
    """Share of images the classifier assigns to their intended class, overall and per class."""

    accuracy: float
    n: int
    per_class: dict[int, float]  # class -> accuracy (classes that occur only)
    per_class_n: dict[int, int]
    predicted: np.ndarray  # [n] int64

    def as_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "n": self.n,
            "per_class": {str(k): v for k, v in self.per_class.items()},
            "per_class_n": {str(k): v for k, v in self.per_class_n.items()},
        }


def _as_uint8(images: Any) -> torch.Tensor:
    """uint8 as given; float images in [-1, 1] quantized once as every metric does (REFERENCE §1)."""
    x = getattr(images, "images", images)
    x = torch.as_tensor(x)
    if x.dtype == torch.uint8:
        return x
    from diffbench.io import quantize

    return quantize(x)


def sample_accuracy(
    images: Any, labels: Any, *, classifier: DigitsClassifier | None = None, batch: int = 1000
) -> Accuracy:
    """Classifier accuracy of images [N, C, 8, 8] (uint8, or float in [-1, 1]; a Samples object works) against
    the class labels [N] they were generated for (the 'classification accuracy' of conditional samples)."""
    x = _as_uint8(images)
    y = torch.as_tensor(labels if labels is not None else getattr(images, "class_labels", None))
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ConfigError(f"{y.numel()} labels for {x.shape[0]} images")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= NUM_CLASSES):
        raise ConfigError(f"labels must be digit classes 0..{NUM_CLASSES - 1}")
    clf = classifier or digits_classifier()
    pred = clf.predict(x, batch=batch)
    hit = (pred == y.to(torch.int64).cpu()).numpy()
    yn = y.cpu().numpy()
    per_class = {int(c): float(hit[yn == c].mean()) for c in np.unique(yn)}
    per_class_n = {int(c): int((yn == c).sum()) for c in np.unique(yn)}
    return Accuracy(
        accuracy=float(hit.mean()) if hit.size else float("nan"),
        n=int(hit.size),
        per_class=per_class,
        per_class_n=per_class_n,
        predicted=pred.numpy(),
    )
