"""Issue 27 item 7: a pretrained teacher's top-1 through lana's evaluation equals a hand-written
resize / centre-crop / normalise of the same images.

Writes a small folder of ImageNet-labelled photos (``val/<synset>/``: random crops, flips and sizes of
the scikit-image photos whose ImageNet class is plain: Chelsea the tabby cat, the espresso, the space
shuttle), then scores the ImageNet-pretrained teacher on it twice: through lana's own evaluation
(``lana.data.load_dataset`` + ``lana.train.predict_logits``, timm's pretrained data configuration)
and through a hand-written PIL path that reads each file, resizes its shorter side to
``floor(img_size / crop_pct)`` with the model's interpolation, crops the centre and normalises by
the model's mean and std. Reports both top-1s, the images whose prediction differs and the largest
logit difference::

    python3 -m bench.eval_equality --model tf_efficientnet_lite0 --out runs/eval-equality
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np

# scikit-image photo -> its ImageNet-1k synset
PHOTO_SYNSETS = {"chelsea": "n02123045", "coffee": "n07920052", "rocket": "n04266014"}


def write_photos(root: Path, per_class: int, seed: int = 0) -> None:
    """``root/{train,val}/<synset>/<i>.jpg``: random crops (half to all of the photo's shorter
    side), flipped half the time, saved with shorter sides of 160 to 400 px."""
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(seed)
    for photo, synset in PHOTO_SYNSETS.items():
        image = Image.fromarray(getattr(data, photo)()).convert("RGB")
        width, height = image.size
        for split, count in (("train", 4), ("val", per_class)):
            folder = root / split / synset
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                side = int(min(width, height) * rng.uniform(0.5, 1.0))
                left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
                crop = image.crop((left, top, left + side, top + int(side * rng.uniform(0.75, 1.0))))
                if rng.random() < 0.5:
                    crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                short = int(rng.integers(160, 401))
                scale = short / min(crop.size)
                crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))))
                crop.save(folder / f"{photo}_{i:04d}.jpg", quality=90)


def hand_written(path: str, config: dict):
    """The file as a normalised float tensor (C, H, W), by hand: PIL resize of the shorter side to
    floor(size / crop_pct), centre crop, / 255, (x - mean) / std."""
    import torch
    from PIL import Image

    size = int(config["input_size"][-1])
    scale_size = math.floor(size / config["crop_pct"])
    resample = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}[config["interpolation"]]
    image = Image.open(path).convert("RGB")
    width, height = image.size
    if width <= height:
        new = (scale_size, int(scale_size * height / width))
    else:
        new = (int(scale_size * width / height), scale_size)
    image = image.resize(new, resample)
    left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = (torch.tensor(v, dtype=torch.float32).view(3, 1, 1) for v in (config["mean"], config["std"]))
    return (x - mean) / std


def main(argv=None) -> dict:
    import torch

    from bench.provenance import cpu_model
    from lana.data import load_dataset
    from lana.streamed import data_config
    from lana.teacher import load_teacher
    from lana.train import predict_logits

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--per-class", type=int, default=100, help="validation images per photo")
    parser.add_argument("--out", default="runs/eval-equality")
    args = parser.parse_args(argv)
    out = Path(args.out)
    root = out / "photos"
    if not (root / "val").is_dir():
        write_photos(root, args.per_class)
    config = data_config(args.model, None)
    test = load_dataset(str(root), "test", int(config["input_size"][-1]), model=args.model, synsets=True)
    teacher = load_teacher(args.model, 1000, pretrained=True).eval()
    ours = predict_logits(teacher, test, batch_size=64)
    dataset = test._dataset(training=False)
    files = [dataset.filename(i) for i in range(len(test))]
    with torch.no_grad():
        hand = torch.cat([teacher(torch.stack([hand_written(f, config) for f in files[i : i + 64]]))
                          for i in range(0, len(files), 64)])  # fmt: skip
    labels = test.labels
    result = {
        "model": args.model,
        "data_config": {k: config[k] for k in ("input_size", "crop_pct", "interpolation", "mean", "std")},
        "images": len(files),
        "top1_lana": float((ours.argmax(1) == labels).float().mean() * 100),
        "top1_hand_written": float((hand.argmax(1) == labels).float().mean() * 100),
        "predictions_differing": int((ours.argmax(1) != hand.argmax(1)).sum()),
        "max_abs_logit_difference": float((ours - hand).abs().max()),
        "cpu": cpu_model(),
        "load_average": os.getloadavg(),
    }
    (out / "eval_equality.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
