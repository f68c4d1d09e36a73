"""One small preset per public data layout: where masks live and how patients are named.

A preset only supplies defaults; every field can be overridden per source in the config.
Mask templates are formatted with {root} (the configured images folder), {dir} (the image's
folder) and {stem} (its file name without suffix); several templates are united (left + right).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    masks: tuple[str, ...] = ()
    group_regex: str | None = None
    label_from_parent: bool = False
    description: str = ""


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("generic", description="any folder tree of X-rays, no masks, one patient per image"),
        Preset("images_masks", masks=("{root}/../masks/{stem}.png",),
               description="images/a.jpg with masks/a.png matched by file stem"),
        Preset("synthetic", masks=("{root}/../masks/{stem}.png",), group_regex=r"^(p\d+)_",
               description="the embedded synthetic default (images/ + masks/, p0007_01 = patient 7)"),
        Preset("montgomery",
               masks=("{root}/../ManualMask/leftMask/{stem}.png", "{root}/../ManualMask/rightMask/{stem}.png"),
               description="Montgomery County set: CXR_png/ + ManualMask/leftMask,rightMask/"),
        Preset("shenzhen", masks=("{root}/../mask/{stem}_mask.png",),
               description="Shenzhen set (Kaggle layout): CXR_png/ + mask/<stem>_mask.png"),
        # Kermany's names carry the patient (person1234_bacteria_1.jpeg, IM-0115-0001.jpeg);
        # grouping by it keeps a patient's studies on one side of the train/val split.
        Preset("kaggle_pneumonia", group_regex=r"(person\d+|IM-\d+)", label_from_parent=True,
               description="Kaggle pneumonia layout: {train,test,val}/{NORMAL,PNEUMONIA}/*.jpeg"),
    )
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}") from None
