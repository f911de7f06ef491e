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

Close-up portraits: the network reads a frame filled by a soft, skin-toned face as "porn"
(16% of the demo's faces scored above the general threshold, 43% above the children's;
"sexy" never fired, bench/results/safety_classifier.json), so a rule on the classes alone
cannot clear them. Where a face fills at least `PORTRAIT_FACE_SHARE` of a refused image,
the image is classified again framed with context (shrunk onto a grey canvas) and refused
only if that view scores above half the threshold too; demo faces score under 0.03 there.
Images without such a face are judged on the one view, as before, except the demo
backend's, which are close-up faces by construction (`close_up`).
"""

from __future__ import annotations

import base64
import importlib
import json
import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from imagegen.errors import ConfigurationError

Audience = Literal["general", "children"]
CLASSES = ("drawing", "hentai", "neutral", "porn", "sexy")
UNSAFE = ("hentai", "porn", "sexy")
NSFWJS_VERSION = "4.4.0"


PORTRAIT_FACE_SHARE = 0.25
"""A face box (dlib's: brows to chin) this share of the frame or more makes a close-up."""
FRAMED_SCALE = 0.5
"""The framed view: the image at this scale, centred on a grey canvas of its size."""
FRAMED_CONFIRM = 0.5
"""A close-up is refused only if its framed view also scores above this x the threshold."""


@dataclass(frozen=True)
class SafetyVerdict:
    """The classifier's probabilities, and whether they refuse the image."""

    score: float
    """P(explicit or suggestive): the sum of the unsafe classes."""
    threshold: float
    classes: dict[str, float]
    model: str
    framed_score: float | None = None
    """A close-up portrait's score framed with context; None: not a close-up, or passed."""

    @property
    def refused(self) -> bool:
        if self.score <= self.threshold:
            return False
        return self.framed_score is None or self.framed_score > self.threshold * FRAMED_CONFIRM

    def reason(self) -> str:
        top = max(UNSAFE, key=lambda name: self.classes.get(name, 0.0))
        framed = (
            ""
            if self.framed_score is None
            else f"; framed with context {self.framed_score:.3f}"
            f" > {self.threshold * FRAMED_CONFIRM:.2f}"
        )
        return (
            f"refused by the image-safety classifier ({self.model}): unsafe score"
            f" {self.score:.3f} > {self.threshold:.2f} (most likely: {top}){framed}"
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


class FaceShare(Protocol):
    """How much of an image its largest face fills (imagegen.faces.FaceCascade)."""

    def largest_share(self, image: Image.Image) -> float: ...


def _unsafe(classes: dict[str, float]) -> float:
    return round(sum(classes.get(name, 0.0) for name in UNSAFE), 4)


def framed(image: Image.Image) -> Image.Image:
    """The image shrunk to `FRAMED_SCALE` on a mid-grey canvas of its own size."""
    rgb = image.convert("RGB")
    canvas = Image.new("RGB", rgb.size, (128, 128, 128))
    small = rgb.resize(
        (max(1, round(rgb.width * FRAMED_SCALE)), max(1, round(rgb.height * FRAMED_SCALE)))
    )
    canvas.paste(small, ((rgb.width - small.width) // 2, (rgb.height - small.height) // 2))
    return canvas


class SafetyCheck:
    """A classifier and the thresholds it is judged by; one image at a time (thread-safe).

    With `faces`, an image that would be refused and is a close-up portrait gets a second,
    framed look (module docstring); without, every image is judged on one view."""

    def __init__(
        self,
        classifier: SafetyClassifier,
        policy: SafetyPolicy | None = None,
        faces: FaceShare | None = None,
    ) -> None:
        self.classifier = classifier
        self.policy = policy or SafetyPolicy()
        self.faces = faces
        self._lock = threading.Lock()

    def check(
        self, image: Image.Image, audience: str = "general", *, close_up: bool = False
    ) -> SafetyVerdict:
        """`close_up`: the image is a close-up portrait by construction (the demo backend
        draws nothing but faces), so a refusal gets the framed look without a face search."""
        with self._lock:
            classes = self.classifier.classify(image)
        verdict = SafetyVerdict(
            _unsafe(classes), self.policy.threshold(audience), classes, self.classifier.name
        )
        if not verdict.refused:
            return verdict
        if not close_up and (
            self.faces is None or self.faces.largest_share(image) < PORTRAIT_FACE_SHARE
        ):
            return verdict
        with self._lock:
            context = self.classifier.classify(framed(image))
        return replace(verdict, framed_score=_unsafe(context))


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
    start = module.index("{modelTopology:")
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
    """A 'valid' convolution of NHWC `x`: one shifted slice per kernel tap (a GEMM for a
    full convolution, a per-channel product for a depthwise one)."""
    kh, kw = kernel.shape[:2]
    out: Array | None = None
    for tap, part in zip(
        ((i, j) for i in range(kh) for j in range(kw)), _windows(x, kh, kw, stride), strict=True
    ):
        if depthwise:
            term = part * kernel[tap][:, 0]
        else:  # one GEMM: numpy's matmul of a 4-d array would loop over rows
            flat = np.ascontiguousarray(part).reshape(-1, part.shape[-1]) @ kernel[tap]
            term = flat.reshape(*part.shape[:3], -1)
        out = term if out is None else out + term
    assert out is not None
    return out


Op = Callable[[list[Array]], Array]
Weight = Callable[[str], "Array | None"]


def _same_pad(x: Array, kh: int, kw: int, value: float = 0.0) -> Array:
    """Pad for a 'same' stride-1 window (odd sizes: symmetric)."""
    return np.pad(
        x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)), constant_values=value
    )


def _windows(x: Array, kh: int, kw: int, stride: int) -> list[Array]:
    """The strided slices of `x` under each tap of a kh x kw window ('valid')."""
    _, h, w, _ = x.shape
    oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
    return [
        x[:, i : i + (oh - 1) * stride + 1 : stride, j : j + (ow - 1) * stride + 1 : stride]
        for i in range(kh)
        for j in range(kw)
    ]


def _conv_op(config: dict[str, Any], weight: Weight, depthwise: bool) -> Op:
    stride = config["strides"][0]
    same = config["padding"] == "same"
    if same and stride != 1:
        raise ConfigurationError(f"nsfwjs layer {config['name']}: 'same' padding with a stride")
    kernel = weight("depthwise_kernel" if depthwise else "kernel")
    assert kernel is not None
    bias = weight("bias") if config["use_bias"] else None
    activation = _activation(config.get("activation", "linear"))

    def conv(xs: list[Array]) -> Array:
        x = _same_pad(xs[0], *kernel.shape[:2]) if same else xs[0]
        out = _conv(x, kernel, stride, depthwise)
        return activation(out if bias is None else out + bias)

    return conv


def _activation(name: str) -> Callable[[Array], Array]:
    if name == "linear":
        return lambda x: x
    if name == "relu":
        return lambda x: np.maximum(x, np.float32(0.0))
    if name == "softmax":

        def softmax(x: Array) -> Array:
            e = np.exp(x - x.max(axis=-1, keepdims=True))
            probabilities: Array = e / e.sum(axis=-1, keepdims=True)
            return probabilities

        return softmax
    raise ConfigurationError(f"nsfwjs activation {name!r} is not supported")


def _batch_norm(config: dict[str, Any], weight: Weight) -> Op:
    mean, variance = weight("moving_mean"), weight("moving_variance")
    assert mean is not None and variance is not None
    gamma = weight("gamma") if config.get("scale", True) else None
    beta = weight("beta") if config.get("center", True) else None
    scale = (1.0 if gamma is None else gamma) / np.sqrt(variance + config["epsilon"])
    shift = (0.0 if beta is None else beta) - mean * scale
    return lambda xs: xs[0] * scale + shift


def _pool(config: dict[str, Any], weight: Weight, average: bool) -> Op:
    kh, kw = config["pool_size"]
    stride = config["strides"][0]
    same = config["padding"] == "same"
    if same and stride != 1:
        raise ConfigurationError(f"nsfwjs layer {config['name']}: 'same' pooling with a stride")

    def pool(xs: list[Array]) -> Array:
        x = xs[0]
        if not average:
            padded = _same_pad(x, kh, kw, -np.inf) if same else x
            top: Array = np.max(_windows(padded, kh, kw, stride), axis=0)
            return top
        if not same:
            mean: Array = np.mean(_windows(x, kh, kw, stride), axis=0)
            return mean
        # TensorFlow's 'same' average leaves the padding out of each window's count.
        total = np.sum(_windows(_same_pad(x, kh, kw), kh, kw, 1), axis=0)
        ones = _same_pad(np.ones((1, *x.shape[1:3], 1), np.float32), kh, kw)
        count = np.sum(_windows(ones, kh, kw, 1), axis=0)
        averaged: Array = total / count
        return averaged

    return pool


def _dense(config: dict[str, Any], weight: Weight) -> Op:
    kernel, bias = weight("kernel"), weight("bias")
    assert kernel is not None and bias is not None
    activation = _activation(config["activation"])
    return lambda xs: activation(xs[0] @ kernel + bias)


def _zero_padding(config: dict[str, Any], weight: Weight) -> Op:
    (top, bottom), (left, right) = config["padding"]
    return lambda xs: np.pad(xs[0], ((0, 0), (top, bottom), (left, right), (0, 0)))


_BUILDERS: dict[str, Callable[[dict[str, Any], Weight], Op]] = {
    "InputLayer": lambda config, weight: lambda xs: xs[0],
    "Dropout": lambda config, weight: lambda xs: xs[0],
    "Flatten": lambda config, weight: lambda xs: xs[0].reshape(xs[0].shape[0], -1),
    "ZeroPadding2D": _zero_padding,
    "Conv2D": lambda config, weight: _conv_op(config, weight, depthwise=False),
    "DepthwiseConv2D": lambda config, weight: _conv_op(config, weight, depthwise=True),
    "BatchNormalization": _batch_norm,
    "ReLU": lambda config, weight: lambda xs: np.clip(xs[0], 0.0, float(config["max_value"])),
    "Activation": lambda config, weight: lambda xs: _activation(config["activation"])(xs[0]),
    "Add": lambda config, weight: lambda xs: np.sum(xs, axis=0),
    "Concatenate": lambda config, weight: lambda xs: np.concatenate(xs, axis=-1),
    "AveragePooling2D": lambda config, weight: _pool(config, weight, average=True),
    "MaxPooling2D": lambda config, weight: _pool(config, weight, average=False),
    "Dense": _dense,
}


class NsfwjsClassifier:
    """One of nsfwjs's Keras models (MIT) evaluated with numpy on CPU: MobileNetV2 (the
    default, ~3.5 MB, 224 px, checked against nsfwjs's own runtime) or InceptionV3 (299 px,
    ~5x the work; it runs, but is not yet checked against nsfwjs's runtime)."""

    def __init__(self, folder: Path, model: str = "mobilenet_v2") -> None:
        if not (folder / "model.min.js").is_file():
            raise ConfigurationError(
                f"the image-safety model is not at {folder}: run scripts/fetch_safety_model.sh"
            )
        self.name = f"nsfwjs-{NSFWJS_VERSION}-{model}"
        layers, weights = _read_model(folder)
        self._layers = layers
        self._size = int(layers[0]["config"]["batch_input_shape"][1])  # 224 or 299
        self._weights = weights
        self._ops = {layer["name"]: self._op(layer) for layer in layers}

    def _op(self, layer: dict[str, Any]) -> Op:
        kind, name, config = layer["class_name"], layer["name"], layer["config"]
        build = _BUILDERS.get(kind)
        if build is None:
            raise ConfigurationError(f"nsfwjs layer {name}: {kind} is not supported")
        return build(config, lambda part: self._weights.get(f"{name}/{part}"))

    def classify(self, image: Image.Image) -> dict[str, float]:
        side = self._size
        rgb = image.convert("RGB").resize((side, side), Image.Resampling.BILINEAR)
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


def load_classifier(factory: str | None, package: Path | None = None) -> SafetyClassifier:
    """nsfwjs's classifier (from `package`), or, for tests only, what `factory` builds: a
    "module:callable" path to a zero-argument callable returning a `SafetyClassifier`, so a
    test drives a whole stack's refusal path through the classifier's own interface."""
    if factory is None:
        return load_nsfwjs(package)
    module, _, name = factory.partition(":")
    try:
        build = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(f"safety classifier factory {factory!r}: {exc}") from exc
    classifier: SafetyClassifier = build()
    return classifier


def load_nsfwjs(package: Path | None = None, model: str = "mobilenet_v2") -> NsfwjsClassifier:
    """The classifier from an unpacked `nsfwjs` package (default: the fetch script's cache);
    `model`: one of the package's Keras models, mobilenet_v2 (224 px) or inception_v3
    (299 px)."""
    root = package or default_model_dir()
    return NsfwjsClassifier(root / "dist" / "models" / model, model)
