"""Image safety: an offline classifier that refuses explicit or suggestive images.

The model is nsfwjs's MobileNetV2 (npm package `nsfwjs`, MIT licence, weights and all): a
224 px image classified as Drawing, Hentai, Neutral, Porn or Sexy. Its Keras topology and
its uint8-quantised weights ship inside the package as JavaScript modules; `load_nsfwjs`
reads them (no Node.js, no network) and runs the network with numpy (no torch).
`scripts/fetch_safety_model.sh` puts the package where `SafetySettings` looks.

The score checked is the probability that the image is explicit or suggestive (Porn +
Hentai + Sexy): a page for children is refused at a lower score than a general one.
Postprocess checks every generated image before it is stored; the gateway checks every
uploaded reference photo.
"""

from __future__ import annotations

import base64
import json
import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from imagegen.errors import ConfigurationError

Audience = Literal["general", "children"]
CLASSES = ("drawing", "hentai", "neutral", "porn", "sexy")
UNSAFE = ("hentai", "porn", "sexy")
_SIZE = 224
NSFWJS_VERSION = "4.4.0"


@dataclass(frozen=True)
class SafetyVerdict:
    """The classifier's probabilities, and whether they refuse the image."""

    score: float
    """P(explicit or suggestive): the sum of the unsafe classes."""
    threshold: float
    classes: dict[str, float]
    model: str

    @property
    def refused(self) -> bool:
        return self.score > self.threshold

    def reason(self) -> str:
        top = max(UNSAFE, key=lambda name: self.classes.get(name, 0.0))
        return (
            f"refused by the image-safety classifier ({self.model}): unsafe score"
            f" {self.score:.3f} > {self.threshold:.2f} (most likely: {top})"
        )


class SafetyClassifier(Protocol):
    """Class probabilities of an image (keys of `CLASSES`, summing to 1)."""

    name: str

    def classify(self, image: Image.Image) -> dict[str, float]: ...


@dataclass(frozen=True)
class SafetyPolicy:
    """Thresholds on the unsafe score, by audience (a children's page is held stricter)."""

    general: float = 0.8
    children: float = 0.4

    def threshold(self, audience: str) -> float:
        return self.children if audience == "children" else self.general


class SafetyCheck:
    """A classifier and the thresholds it is judged by; one image at a time (thread-safe)."""

    def __init__(self, classifier: SafetyClassifier, policy: SafetyPolicy | None = None) -> None:
        self.classifier = classifier
        self.policy = policy or SafetyPolicy()
        self._lock = threading.Lock()

    def check(self, image: Image.Image, audience: str = "general") -> SafetyVerdict:
        with self._lock:
            classes = self.classifier.classify(image)
        unsafe = round(sum(classes.get(name, 0.0) for name in UNSAFE), 4)
        return SafetyVerdict(unsafe, self.policy.threshold(audience), classes, self.classifier.name)


# --- nsfwjs's MobileNetV2, read from its npm package ----------------------------------


def _js_literal(text: str) -> Any:
    """A minified JavaScript object literal (the package's model module) as JSON."""
    text = re.sub(r"([{,])([A-Za-z_$][\w$]*):", r'\1"\2":', text)
    text = text.replace("!0", "true").replace("!1", "false")
    text = re.sub(r"([:\[,])(-?)\.(\d)", r"\1\g<2>0.\3", text)
    return json.loads(text)


def _read_model(folder: Path) -> tuple[list[dict[str, Any]], dict[str, NDArray[np.float32]]]:
    """The Keras layers and the dequantised weights, by name."""
    module = (folder / "model.min.js").read_text()
    start = module.index("a.exports=") + len("a.exports=")
    end = module.rindex("},{}]},{},[1])(1)});")
    spec = _js_literal(module[start:end])
    layers: list[dict[str, Any]] = spec["modelTopology"]["model_config"]["config"]["layers"]
    weights: dict[str, NDArray[np.float32]] = {}
    for group in spec["weightsManifest"]:
        data = b""
        for path in group["paths"]:
            shard = (folder / f"{path}.min.js").read_text()
            close = shard.rindex('"')
            data += base64.b64decode(shard[shard.rindex('"', 0, close) + 1 : close])
        offset = 0
        for entry in group["weights"]:
            count = math.prod(entry["shape"])
            quant = entry.get("quantization")
            if quant is None:
                values = np.frombuffer(data, np.float32, count, offset).astype(np.float32)
                offset += 4 * count
            elif quant["dtype"] == "uint8":
                raw = np.frombuffer(data, np.uint8, count, offset).astype(np.float32)
                values = raw * np.float32(quant["scale"]) + np.float32(quant["min"])
                offset += count
            else:
                raise ConfigurationError(f"nsfwjs weight {entry['name']}: {quant['dtype']}")
            weights[entry["name"]] = values.reshape(entry["shape"])
        if offset != len(data):
            raise ConfigurationError(f"nsfwjs weights: {len(data) - offset} bytes unread")
    return layers, weights


Array = NDArray[np.float32]


def _conv(x: Array, kernel: Array, stride: int, depthwise: bool) -> Array:
    """A 'valid' convolution of NHWC `x`: one shifted slice per kernel tap (a matmul for a
    full convolution, a per-channel product for a depthwise one)."""
    kh, kw = kernel.shape[:2]
    _, h, w, _ = x.shape
    oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
    out: Array | None = None
    for i in range(kh):
        for j in range(kw):
            part = x[
                :, i : i + (oh - 1) * stride + 1 : stride, j : j + (ow - 1) * stride + 1 : stride
            ]
            if depthwise:
                tap = part * kernel[i, j, :, 0]
            else:  # one GEMM: numpy's matmul of a 4-d array would loop over rows
                flat = np.ascontiguousarray(part).reshape(-1, part.shape[-1]) @ kernel[i, j]
                tap = flat.reshape(*part.shape[:3], -1)
            out = tap if out is None else out + tap
    assert out is not None
    return out


class NsfwjsClassifier:
    """nsfwjs's MobileNetV2 (MIT) evaluated with numpy on CPU (~3.5 MB, 224 px input)."""

    def __init__(self, folder: Path) -> None:
        if not (folder / "model.min.js").is_file():
            raise ConfigurationError(
                f"the image-safety model is not at {folder}: run scripts/fetch_safety_model.sh"
            )
        self.name = f"nsfwjs-{NSFWJS_VERSION}-mobilenet_v2"
        layers, weights = _read_model(folder)
        self._layers = layers
        self._weights = weights
        self._ops = {layer["name"]: self._op(layer) for layer in layers}

    def _op(self, layer: dict[str, Any]) -> Callable[[list[Array]], Array]:
        kind, name, config = layer["class_name"], layer["name"], layer["config"]

        def weight(part: str) -> Array:
            return self._weights[f"{name}/{part}"]

        if kind in ("InputLayer", "Dropout"):
            return lambda xs: xs[0]
        if kind == "Flatten":
            return lambda xs: xs[0].reshape(xs[0].shape[0], -1)
        if kind == "ZeroPadding2D":
            (top, bottom), (left, right) = config["padding"]
            return lambda xs: np.pad(xs[0], ((0, 0), (top, bottom), (left, right), (0, 0)))
        if kind in ("Conv2D", "DepthwiseConv2D"):
            stride = config["strides"][0]
            if config["padding"] == "same" and stride != 1:
                raise ConfigurationError(f"nsfwjs layer {name}: 'same' padding with a stride")
            depthwise = kind == "DepthwiseConv2D"
            kernel = weight("depthwise_kernel" if depthwise else "kernel")
            bias = weight("bias") if config["use_bias"] else None
            pad = kernel.shape[0] // 2 if config["padding"] == "same" else 0

            def conv(xs: list[Array]) -> Array:
                x = xs[0]
                if pad:
                    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
                out = _conv(x, kernel, stride, depthwise)
                return out if bias is None else out + bias

            return conv
        if kind == "BatchNormalization":
            scale = weight("gamma") / np.sqrt(weight("moving_variance") + config["epsilon"])
            shift = weight("beta") - weight("moving_mean") * scale
            return lambda xs: xs[0] * scale + shift
        if kind == "ReLU":
            top = float(config["max_value"])
            return lambda xs: np.clip(xs[0], 0.0, top)
        if kind == "Add":
            return lambda xs: np.sum(xs, axis=0)
        if kind == "AveragePooling2D":
            ph, pw = config["pool_size"]

            def pool(xs: list[Array]) -> Array:
                n, h, w, c = xs[0].shape
                cut = xs[0][:, : h // ph * ph, : w // pw * pw]
                pooled: Array = cut.reshape(n, h // ph, ph, w // pw, pw, c).mean(axis=(2, 4))
                return pooled

            return pool
        if kind == "Dense" and config["activation"] in ("relu", "softmax"):
            kernel, bias = weight("kernel"), weight("bias")
            if config["activation"] == "relu":
                return lambda xs: np.maximum(xs[0] @ kernel + bias, 0.0)

            def softmax(xs: list[Array]) -> Array:
                logits = xs[0] @ kernel + bias
                e = np.exp(logits - logits.max(axis=1, keepdims=True))
                probabilities: Array = e / e.sum(axis=1, keepdims=True)
                return probabilities

            return softmax
        raise ConfigurationError(f"nsfwjs layer {name}: {kind} is not supported")

    def classify(self, image: Image.Image) -> dict[str, float]:
        rgb = image.convert("RGB").resize((_SIZE, _SIZE), Image.Resampling.BILINEAR)
        outputs: dict[str, Array] = {}
        for layer in self._layers:
            inbound = layer["inbound_nodes"]
            if inbound:
                inputs = [outputs[node[0]] for node in inbound[0]]
            else:
                inputs = [np.asarray(rgb, dtype=np.float32)[None] / np.float32(255.0)]
            outputs[layer["name"]] = self._ops[layer["name"]](inputs)
        probabilities = outputs[self._layers[-1]["name"]][0].tolist()
        return {name: round(float(p), 5) for name, p in zip(CLASSES, probabilities, strict=True)}


def default_model_dir() -> Path:
    """Where scripts/fetch_safety_model.sh unpacks the package (a cache, like Kafka's jars)."""
    return Path.home() / ".cache" / "imagegen" / f"nsfwjs-{NSFWJS_VERSION}" / "package"


def load_nsfwjs(package: Path | None = None) -> NsfwjsClassifier:
    """The classifier from an unpacked `nsfwjs` package (default: the fetch script's cache)."""
    root = package or default_model_dir()
    return NsfwjsClassifier(root / "dist" / "models" / "mobilenet_v2")
