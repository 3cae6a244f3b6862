"""Feature extractors for metrics, behind an explicit registry; each has an id stored with every statistic."""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from diffbench.errors import ConfigError, MissingDependencyError, ModelLoadError, UnknownNameError

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
INCEPTION_SHA256_PREFIX = "6726825d"  # torch.hub's convention: the file name carries its sha256 prefix
INCEPTION_ID = "inception-v3-compat"


@runtime_checkable
class FeatureExtractor(Protocol):
    """uint8 images [B, C, H, W] (C 1 or 3, any device) to features [B, D]; `id` names the exact network."""

    id: str

    def features(self, images: torch.Tensor) -> torch.Tensor: ...


def has_logits(extractor: Any) -> bool:
    """True when the extractor also gives classifier logits (needed by the Inception Score)."""
    return callable(getattr(extractor, "features_and_logits", None))


@dataclass(frozen=True)
class ExtractorInfo:
    """One registry entry: factory(*, device, weights_path) returns a FeatureExtractor."""

    name: str
    factory: Callable[..., FeatureExtractor]
    description: str


EXTRACTORS: dict[str, ExtractorInfo] = {}


def register_extractor(info: ExtractorInfo) -> None:
    """Add an extractor to the registry; a duplicate name is refused."""
    if info.name in EXTRACTORS:
        raise ConfigError(f"feature extractor '{info.name}' is already registered")
    if ":" in info.name:
        raise ConfigError(f"feature extractor name '{info.name}' must not contain ':' (reserved for module:factory)")
    EXTRACTORS[info.name] = info


def check_extractor_name(name: str) -> None:
    """Refuse an unknown extractor name before any work (a `module:factory` is checked when loaded)."""
    if ":" not in name and name not in EXTRACTORS:
        raise UnknownNameError("feature extractor", name, EXTRACTORS)


def load_extractor(
    name: str, *, device: torch.device | str = "cpu", weights_path: str | os.PathLike | None = None
) -> FeatureExtractor:
    """A registered extractor by name, or a user's `module:factory` (called with device=, weights_path=)."""
    if ":" in name:
        extractor = _from_entry_point(name, device=device, weights_path=weights_path)
    else:
        if name not in EXTRACTORS:
            raise UnknownNameError("feature extractor", name, EXTRACTORS)
        extractor = EXTRACTORS[name].factory(device=device, weights_path=weights_path)
    if not isinstance(extractor, FeatureExtractor):
        raise ConfigError(f"feature extractor '{name}' gives {type(extractor).__name__}, which lacks id / features()")
    return extractor


@dataclass
class CallableExtractor:
    """Wraps a plain callable (e.g. an nn.Module) uint8 NCHW -> [B, D] as a FeatureExtractor."""

    id: str
    fn: Callable[[torch.Tensor], torch.Tensor]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Features of one batch."""
        return self.fn(images)


def _from_entry_point(spec: str, *, device: Any, weights_path: Any) -> Any:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"feature extractor '{spec}': cannot import {module_name} ({exc})") from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise ConfigError(f"feature extractor '{spec}': {module_name} has no attribute {attr}")
    kwargs: dict[str, Any] = {"device": device}
    if weights_path is not None:
        kwargs["weights_path"] = weights_path
    obj = factory(**kwargs)
    if not hasattr(obj, "features") and callable(obj):
        obj = CallableExtractor(id=getattr(obj, "id", spec), fn=obj)
    return obj


def default_inception_weights() -> Path:
    """Where torch-fidelity keeps its Inception weights: $TORCH_HOME/hub/checkpoints/<file>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def find_weights() -> Path | None:
    """The Inception weights on disk: the registry cache, then $TORCH_HOME/hub/checkpoints; None if neither."""
    from diffbench.models.registry import find_inception_weights

    return find_inception_weights()


def _missing_weights_message() -> str:
    from diffbench.models.registry import INCEPTION_ENTRY, inception_weights_places

    cache, hub = inception_weights_places()
    return (
        f"Inception-v3 weights not found: run `diffbench checkpoints fetch {INCEPTION_ENTRY}`, or download "
        f"{INCEPTION_WEIGHTS_URL} and save it as {cache} (or as {hub}, where torch-fidelity looks), "
        "or pass --inception-weights PATH"
    )


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
    """Turn TF32 off for convolutions and matmuls inside the block, restoring the caller's flags after."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class InceptionV3:
    """Inception-v3 pool3 (2048-d) and logits via torch-fidelity's TF-compatible port (REFERENCE §5)."""

    dim = 2048

    def __init__(self, *, device: torch.device | str = "cpu", weights_path: str | os.PathLike | None = None):
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as exc:
            raise MissingDependencyError(f"torch-fidelity is needed for Inception features ({exc})") from None
        if weights_path is not None:
            path = Path(weights_path).expanduser()
            if not path.exists():
                raise ModelLoadError(f"--inception-weights {weights_path}: {path} does not exist")
            if not path.is_file():
                raise ModelLoadError(f"--inception-weights {weights_path}: {path} is not a file")
        else:
            found = find_weights()
            if found is None:
                raise ModelLoadError(_missing_weights_message())
            path = found
        from diffbench.metrics.sources import file_sha256

        sha = file_sha256(path)
        try:  # the file must be a plain state dict: refuse anything whose unpickling would run code
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelLoadError(f"{path}: not a plain state dict of Inception weights ({exc})") from None
        try:
            net = FeatureExtractorInceptionV3(
                INCEPTION_ID, ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path)
            )
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ModelLoadError(f"{path}: does not hold Inception-v3 weights ({first})") from None
        self.net = net.to(device)
        self.device = torch.device(device)
        self.weights_sha256 = sha
        # the standard file keeps the plain id; any other weights are named by their hash
        self.id = INCEPTION_ID if sha.startswith(INCEPTION_SHA256_PREFIX) else f"{INCEPTION_ID}@{sha[:12]}"

    def _run(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ConfigError(f"Inception takes uint8 [B, 3, H, W] images, got {images.dtype} {list(images.shape)}")
        x = images.to(self.device)
        if x.shape[1] == 1:  # grey images are fed as RGB
            x = x.expand(-1, 3, -1, -1)
        with torch.no_grad(), _no_tf32():  # REFERENCE §5: no TF32 for reference numbers
            features, logits = self.net(x)
        return features, logits

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """pool3 features [B, 2048] (float32, as torch-fidelity gives them)."""
        return self._run(images)[0]

    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pool3 features and the unbiased logits [B, 1008] used for the Inception Score."""
        return self._run(images)


register_extractor(
    ExtractorInfo(
        name=INCEPTION_ID,
        factory=InceptionV3,
        description="Inception-v3 pool3 2048-d, torch-fidelity's TF-2015-12-05 port (EDM/ADM FID protocol)",
    )
)
