"""Image classification tasks for CLIP-style prompt learning.

Sources (`load_image_task`):
- `fashion-mnist`: the built-in offline task, read from Debian's `dataset-fashion-mnist`
  (/usr/share/datasets/fashion-mnist; `$PROMPTTUNE_FASHION_MNIST` overrides the folder);
- an image folder `root/<class>/*.png|jpg` (with `root/train/<class>` and `root/test/<class>`
  when the folder has them, else a seeded 20% of each class is held out);
- a CSV of `path,label` (paths relative to the CSV; an optional `split` column says train/test);
- a YAML file: `{name, train, test, classes, templates, base_classes}` where train/test are a
  folder or a CSV and `classes` lists the class names in label order.

Images are held as uint8 (H, W, 3) tensors; grayscale and RGBA files are converted to RGB.
Base-to-new (CoOp's protocol): training draws only from `base_classes`; evaluation scores base-class
test images among the base classes and new-class test images among the new classes.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from ..errors import ConfigError, DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
DEFAULT_TEMPLATES = ["a photo of a {}."]
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                         "ankle boot"]
# Each kind of item (tops, outerwear, legwear, footwear, accessories) has a base and a new class, so a
# new class has a semantic neighbour among the base ones, as in CLIP's base-to-new datasets.
# base: t-shirt, trouser, coat, sandal, bag; new: pullover, dress, shirt, sneaker, ankle boot
FASHION_MNIST_BASE = [0, 1, 4, 5, 8]
FASHION_MNIST_TEMPLATES = ["a photo of a {}.", "a low resolution photo of a {}.", "a black and white photo of a {}.",
                           "a photo of the {}, a type of clothing.", "a product photo of a {}."]


@dataclass
class ImageSplit:
    """Images of one split, read on demand: `images(indices)` -> uint8 (n, H, W, 3)."""

    labels: torch.Tensor  # (n,) long
    origins: list[str]  # "file" or "file:index", for messages and content hashing
    array: torch.Tensor | None = None  # (n, H, W, 3) uint8 when the data is an array
    paths: list[Path] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def images(self, indices: Sequence[int] | None = None) -> torch.Tensor:
        idx = list(range(len(self))) if indices is None else list(indices)
        if self.array is not None:
            return self.array[idx]
        assert self.paths is not None
        return stack_images([_read_rgb(self.paths[i]) for i in idx])

    def content_hash(self, indices: Sequence[int]) -> str:
        """A hash of the images' bytes: the feature cache's key does not trust file names."""
        h = hashlib.sha256()
        for i in indices:
            if self.array is not None:
                h.update(self.array[i].numpy().tobytes())
            else:
                h.update(Path(self.paths[i]).read_bytes())
        return h.hexdigest()


@dataclass
class ImageFewShot:
    train: list[int]  # indices into task.train
    dev: list[int]
    classes: list[int]  # the classes trained on (base classes), in label order


@dataclass
class ImageTask:
    name: str
    classes: list[str]
    train: ImageSplit
    test: ImageSplit
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    base_classes: list[int] | None = None

    @property
    def new_classes(self) -> list[int]:
        base = set(self.base_classes or range(len(self.classes)))
        return [c for c in range(len(self.classes)) if c not in base]

    def few_shot(self, k: int, seed: int, dev_shots: int | None = None, base_only: bool = True) -> ImageFewShot:
        """k training and `dev_shots` (default k, at most 16) dev images per class, disjoint, seeded."""
        if k < 1:
            raise ConfigError(f"--shots must be at least 1 (got {k})")
        classes = list(self.base_classes) if (base_only and self.base_classes) else list(range(len(self.classes)))
        dev_k = min(k, 16) if dev_shots is None else dev_shots
        rng = random.Random(seed)
        train, dev = [], []
        labels = self.train.labels.tolist()
        for c in classes:
            pool = [i for i, y in enumerate(labels) if y == c]
            if len(pool) < k + dev_k:
                raise DataError(f"task '{self.name}': class '{self.classes[c]}' has {len(pool)} training images, "
                                f"fewer than --shots {k} + {dev_k} dev")
            picked = rng.sample(pool, k + dev_k)
            train += picked[:k]
            dev += picked[k:]
        return ImageFewShot(train=sorted(train), dev=sorted(dev), classes=classes)

    def test_indices(self, classes: Sequence[int], limit_per_class: int | None = None) -> list[int]:
        """Test images of `classes` (the first `limit_per_class` of each, in file order)."""
        wanted = set(classes)
        counts: dict[int, int] = {}
        out = []
        for i, y in enumerate(self.test.labels.tolist()):
            if y in wanted and (limit_per_class is None or counts.get(y, 0) < limit_per_class):
                counts[y] = counts.get(y, 0) + 1
                out.append(i)
        return out

    def prompts_for(self, classes: Sequence[int], template: str | None = None) -> list[str]:
        t = template or self.templates[0]
        return [t.format(self.classes[c]) for c in classes]


# --------------------------------------------------------------------------- reading images

def stack_images(images: list[torch.Tensor]) -> torch.Tensor:
    """uint8 images of any sizes as one (n, H, W, 3) batch."""
    sizes = {tuple(im.shape) for im in images}
    if len(sizes) > 1:  # mixed sizes: bring every image to the first one's size (the backbone resizes again)
        h, w = images[0].shape[:2]
        images = [_resize(im, h, w) for im in images]
    return torch.stack(images) if images else torch.zeros(0, 1, 1, 3, dtype=torch.uint8)


def _resize(im: torch.Tensor, h: int, w: int) -> torch.Tensor:
    x = im.permute(2, 0, 1).unsqueeze(0).float()
    x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return x.squeeze(0).permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8)


def _read_rgb(path: Path) -> torch.Tensor:
    return decode_image(path, str(path))


def decode_image(source: Path | bytes, where: str) -> torch.Tensor:
    """An image file or its bytes as uint8 RGB (H, W, 3); transparency is composited over white, as viewers
    show it. `where` names the input in the error (a path, or `input[3]` for a request)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            if im.mode in ("RGBA", "LA", "P"):
                rgba = im.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, rgba)
            rgb = im.convert("RGB")
            return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy())
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{where}: not a readable image ({exc})") from None


def _readable(path: Path) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return False


def _folder_split(root: Path, classes: list[str] | None, where: str) -> tuple[list[str], ImageSplit]:
    """Read `root/<class>/*`. Unreadable files are skipped with a warning; an empty class is an error."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root}: no class folders (expected {root}/<class>/<image files>)")
    names = [f.name for f in folders]
    if classes is None:
        classes = names
    else:
        unknown = [n for n in names if n not in classes and n.replace("_", " ") not in classes]
        if unknown:
            raise DataError(f"{root}: class folder(s) {', '.join(unknown)} of the {where} split are not in the "
                            f"class list ({', '.join(classes)})")
    paths, labels, skipped = [], [], 0
    for folder in folders:
        label = classes.index(folder.name if folder.name in classes else folder.name.replace("_", " "))
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        good = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES and _readable(p)]
        skipped += len(files) - len(good)
        if not good:
            raise DataError(f"{folder}: class folder has no readable images ({len(files)} files)")
        paths += good
        labels += [label] * len(good)
    if skipped:
        log.warning("%s: skipped %d unreadable or non-image file(s)", root, skipped)
    return classes, ImageSplit(torch.tensor(labels), [str(p) for p in paths], paths=paths)


def _csv_split(path: Path, classes: list[str] | None, split: str | None) -> tuple[list[str], ImageSplit]:
    if not path.exists():
        raise DataError(f"{path}: CSV file does not exist")
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"path", "label"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{path}:1: the header needs columns path,label (missing {', '.join(sorted(missing))})")
        for line, row in enumerate(reader, start=2):
            if split and "split" in (reader.fieldnames or []) and (row.get("split") or "").strip() != split:
                continue  # with a split column, a row belongs to the split it names (a blank one to none)
            rows.append((line, row["path"].strip(), row["label"].strip()))
    if classes is None:
        classes = sorted({r[2] for r in rows})
    paths, labels, skipped = [], [], 0
    for line, rel, label in rows:
        if label not in classes:
            raise DataError(f"{path}:{line}: label '{label}' is not in the class list ({', '.join(classes)})")
        p = (path.parent / rel) if not Path(rel).is_absolute() else Path(rel)
        if not p.exists():
            raise DataError(f"{path}:{line}: image file {p} does not exist")
        if not _readable(p):
            skipped += 1
            log.warning("%s:%d: %s is not a readable image; skipped", path, line, p)
            continue
        paths.append(p)
        labels.append(classes.index(label))
    if skipped:
        log.warning("%s: skipped %d unreadable image(s)", path, skipped)
    if not paths:
        raise DataError(f"{path}: no readable images{' in split ' + split if split else ''}")
    return classes, ImageSplit(torch.tensor(labels), [str(p) for p in paths], paths=paths)


def _csv_has_split(path: Path) -> bool:
    if not path.exists():
        raise DataError(f"{path}: CSV file does not exist")
    with path.open(newline="", encoding="utf-8") as f:
        return "split" in (csv.DictReader(f).fieldnames or [])


def _hold_out(split: ImageSplit, fraction: float, seed: int = 0) -> tuple[ImageSplit, ImageSplit]:
    rng = random.Random(seed)
    test = set()
    for c in sorted(set(split.labels.tolist())):
        idx = [i for i, y in enumerate(split.labels.tolist()) if y == c]
        test |= set(rng.sample(idx, max(1, int(len(idx) * fraction)))) if len(idx) > 1 else set()
    train_i = [i for i in range(len(split)) if i not in test]
    test_i = sorted(test)

    def sub(ii: list[int]) -> ImageSplit:
        return ImageSplit(split.labels[ii], [split.origins[i] for i in ii],
                          array=split.array[ii] if split.array is not None else None,
                          paths=[split.paths[i] for i in ii] if split.paths is not None else None)

    return sub(train_i), sub(test_i)


# --------------------------------------------------------------------------- Fashion-MNIST

def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_mnist_dir() -> Path:
    root = Path(os.environ.get("PROMPTTUNE_FASHION_MNIST", FASHION_MNIST_DIR))
    if not (root / "train-images-idx3-ubyte.gz").exists():
        raise DataError(f"Fashion-MNIST not found in {root}: install Debian's dataset-fashion-mnist "
                        "(apt-get install dataset-fashion-mnist) or set $PROMPTTUNE_FASHION_MNIST")
    return root


def _fashion_split(root: Path, prefix: str) -> ImageSplit:
    images = torch.from_numpy(_idx(root / f"{prefix}-images-idx3-ubyte.gz").copy())
    labels = torch.from_numpy(_idx(root / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64))
    rgb = images.unsqueeze(-1).expand(-1, -1, -1, 3).contiguous()  # grayscale -> RGB, as any image is read
    return ImageSplit(labels, [f"{prefix}:{i}" for i in range(len(labels))], array=rgb)


def fashion_mnist() -> ImageTask:
    root = fashion_mnist_dir()
    return ImageTask("fashion-mnist", list(FASHION_MNIST_CLASSES), _fashion_split(root, "train"),
                     _fashion_split(root, "t10k"), list(FASHION_MNIST_TEMPLATES), list(FASHION_MNIST_BASE))


# --------------------------------------------------------------------------- entry point

BUILTIN_IMAGE_TASKS = {"fashion-mnist": fashion_mnist}


def _split_from(source: Path, classes: list[str] | None, split: str | None) -> tuple[list[str], ImageSplit]:
    if source.suffix.lower() == ".csv":
        return _csv_split(source, classes, split)
    if not source.is_dir():
        raise DataError(f"{source}: neither an image folder nor a .csv file (it does not exist)")
    return _folder_split(source, classes, split or "train")


def load_image_task(source: str | Path, base_classes: Sequence[str] | None = None,
                    templates: Sequence[str] | None = None) -> ImageTask:
    """A built-in name, an image folder, a CSV or a YAML task file (see the module docstring)."""
    name = str(source)
    if name in BUILTIN_IMAGE_TASKS:
        task = BUILTIN_IMAGE_TASKS[name]()
    else:
        path = Path(source).expanduser()
        if path.suffix.lower() in (".yaml", ".yml"):
            task = _yaml_task(path)
        elif path.suffix.lower() == ".csv":
            if _csv_has_split(path):
                classes, train = _csv_split(path, None, "train")
                classes, test = _csv_split(path, classes, "test")
            else:
                classes, full = _csv_split(path, None, None)
                train, test = _hold_out(full, 0.2)
            task = ImageTask(path.stem, classes, train, test)
        elif path.is_dir():
            if (path / "train").is_dir():
                classes, train = _folder_split(path / "train", None, "train")
                _, test = _folder_split(path / "test", classes, "test") if (path / "test").is_dir() else (None, None)
                if test is None:
                    train, test = _hold_out(train, 0.2)
            else:
                classes, full = _folder_split(path, None, "train")
                train, test = _hold_out(full, 0.2)
            task = ImageTask(path.name, [c.replace("_", " ") for c in classes], train, test)
        else:
            raise DataError(f"image task '{source}': not a built-in ({', '.join(BUILTIN_IMAGE_TASKS)}), an image "
                            "folder, a .csv or a .yaml file (no such file or directory)")
    if templates:
        for t in templates:
            if "{}" not in t:
                raise ConfigError(f"template '{t}' has no '{{}}' where the class name goes")
        task.templates = list(templates)
    if base_classes:
        unknown = [c for c in base_classes if c not in task.classes]
        if unknown:
            raise ConfigError(f"base classes {unknown} are not classes of '{task.name}' ({', '.join(task.classes)})")
        task.base_classes = [task.classes.index(c) for c in base_classes]
    return task


def _yaml_task(path: Path) -> ImageTask:
    if not path.exists():
        raise DataError(f"{path}: task file does not exist")
    spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    allowed = {"name", "train", "test", "classes", "templates", "base_classes"}
    extra = set(spec) - allowed
    if extra:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(extra))} (allowed: {', '.join(sorted(allowed))})")
    if "train" not in spec:
        raise ConfigError(f"{path}: 'train' (an image folder or a CSV) is required")
    classes = spec.get("classes")
    base = path.parent
    classes, train = _split_from(base / spec["train"], classes, "train")
    if "test" in spec:
        classes, test = _split_from(base / spec["test"], classes, "test")
    else:
        train, test = _hold_out(train, 0.2)
    task = ImageTask(spec.get("name", path.stem), list(classes), train, test,
                     list(spec.get("templates") or DEFAULT_TEMPLATES))
    if spec.get("base_classes"):
        unknown = [c for c in spec["base_classes"] if c not in task.classes]
        if unknown:
            raise ConfigError(f"{path}: base_classes {unknown} are not in classes ({', '.join(task.classes)})")
        task.base_classes = [task.classes.index(c) for c in spec["base_classes"]]
    return task
