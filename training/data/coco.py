"""COCO instance annotations as the source of pseudo videos (``training.data.pseudo_video``).

The COCO -> YTVIS19 / YTVIS21 / OVIS category maps are the official
``tools/convert_coco2ytvis.py`` tables of https://github.com/KainingYing/CTVIS (pairs
``COCO id -> target dataset id``). Reading a COCO
file with a map applies the conversion on the fly: only annotations of mapped categories are
kept, images left without one are dropped, crowd annotations are never instances, and labels
are the target's contiguous ids (``target id - 1``: the targets number their classes 1..K).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from model.rle import decode as decode_rle

__all__ = [
    "CATEGORY_MAPS",
    "COCO_TO_OVIS",
    "COCO_TO_YTVIS19",
    "COCO_TO_YTVIS21",
    "TARGET_NUM_CLASSES",
    "CocoImage",
    "CocoInstances",
]

COCO_TO_YTVIS19: dict[int, int] = {
    1: 1, 2: 21, 3: 6, 4: 21, 5: 28, 7: 17, 8: 29, 9: 34, 17: 14, 18: 8, 19: 18,
    21: 15, 22: 32, 23: 20, 24: 30, 25: 22, 35: 33, 36: 33, 41: 5, 42: 27, 43: 40,
}  # fmt: skip
COCO_TO_YTVIS21: dict[int, int] = {
    1: 26, 2: 23, 3: 5, 4: 23, 5: 1, 7: 36, 8: 37, 9: 4, 16: 3, 17: 6, 18: 9, 19: 19,
    21: 7, 22: 12, 23: 2, 24: 40, 25: 18, 34: 14, 35: 31, 36: 31, 41: 29, 42: 33, 43: 34,
}  # fmt: skip
COCO_TO_OVIS: dict[int, int] = {
    1: 1, 2: 21, 3: 25, 4: 22, 5: 23, 6: 25, 8: 25, 9: 24, 17: 3, 18: 4, 19: 5,
    20: 6, 21: 7, 22: 8, 23: 9, 24: 10, 25: 11,
}  # fmt: skip

CATEGORY_MAPS: dict[str, dict[int, int]] = {
    "ytvis19": COCO_TO_YTVIS19,
    "ytvis21": COCO_TO_YTVIS21,
    "ovis": COCO_TO_OVIS,
}
"""COCO category id -> target dataset category id, per target dataset."""

TARGET_NUM_CLASSES: dict[str, int] = {"ytvis19": 40, "ytvis21": 40, "ovis": 25}
"""K of each target dataset (its categories are numbered 1..K)."""


@dataclass(frozen=True)
class CocoImage:
    """One COCO image with its (non-crowd, mapped) instances.

    Attributes:
        image: HxWx3 uint8 RGB.
        masks: NxHxW bool instance masks (polygon parts merged), in annotation order.
        labels: N int64 contiguous labels of the target dataset.
        image_id: COCO image id.
    """

    image: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    image_id: int


class CocoInstances:
    """Random access to COCO images and their instances, optionally mapped to a VIS dataset."""

    def __init__(
        self,
        annotation_file: str | Path,
        image_root: str | Path,
        target: str | None = None,
    ) -> None:
        """Index a COCO instances json.

        Args:
            annotation_file: COCO ``instances_*.json`` (or an already converted file).
            image_root: folder the images' ``file_name`` are relative to.
            target: ``"ytvis19"``, ``"ytvis21"`` or ``"ovis"`` to apply that category map;
                None keeps every COCO category, labelled by ascending COCO id.
        """
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco = COCO(str(annotation_file))
        self.image_root = Path(image_root)
        if target is None:
            cat_ids = sorted(self.coco.getCatIds())
            self.label_of = {cid: k for k, cid in enumerate(cat_ids)}
            self.num_classes = len(cat_ids)
        else:
            if target not in CATEGORY_MAPS:
                raise ValueError(f"unknown target {target!r}; choose from {sorted(CATEGORY_MAPS)}")
            self.label_of = {c: t - 1 for c, t in CATEGORY_MAPS[target].items()}
            self.num_classes = TARGET_NUM_CLASSES[target]
        # the conversion script drops images left without a mapped annotation
        self.image_ids = [
            img_id
            for img_id in sorted(self.coco.getImgIds())
            if any(
                ann["category_id"] in self.label_of for ann in self.coco.imgToAnns.get(img_id, [])
            )
        ]

    def __len__(self) -> int:
        return len(self.image_ids)

    def annotations(self, index: int) -> list[dict[str, Any]]:
        """The non-crowd, mapped annotations of image ``index``, in file order."""
        anns = self.coco.imgToAnns.get(self.image_ids[index], [])
        return [
            ann for ann in anns if not ann.get("iscrowd", 0) and ann["category_id"] in self.label_of
        ]

    def load(self, index: int) -> CocoImage:
        """Read image ``index`` (RGB) and rasterise its instances at full resolution."""
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        with Image.open(self.image_root / info["file_name"]) as im:
            image = np.asarray(im.convert("RGB"))
        height, width = image.shape[:2]
        anns = self.annotations(index)
        masks = np.zeros((len(anns), height, width), dtype=bool)
        for k, ann in enumerate(anns):
            if ann.get("segmentation"):
                masks[k] = decode_rle(self.coco.annToRLE(ann))
        labels = np.array([self.label_of[ann["category_id"]] for ann in anns], dtype=np.int64)
        return CocoImage(image=image, masks=masks, labels=labels, image_id=int(image_id))
