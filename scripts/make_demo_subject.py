#!/usr/bin/python3
"""Draws the demo's synthetic subject: a small red robot, five photos of it.

Writes scripts/demo/subject/robot-{0..4}.png (committed; `make demo` needs no
Python). Each photo shows the same robot (red body, white face with two eyes,
an antenna with a yellow tip, blue feet) at another size, position and angle,
on another background, as a user's phone photos of their subject would.

    /usr/bin/python3 scripts/make_demo_subject.py
"""
import math
import random

from PIL import Image, ImageDraw

BACKGROUNDS = [(205, 225, 240), (235, 220, 190), (190, 225, 195), (230, 230, 230), (215, 200, 235)]


def robot(size, angle, bg, seed):
    rnd = random.Random(seed)
    img = Image.new("RGB", (size[0] * 2, size[1] * 2), bg)
    d = ImageDraw.Draw(img)
    # a floor line and some texture, so backgrounds are not flat
    for _ in range(40):
        x, y = rnd.randrange(img.width), rnd.randrange(img.height)
        c = tuple(max(0, v - rnd.randrange(10, 30)) for v in bg)
        d.ellipse([x, y, x + 6, y + 6], fill=c)
    cx, cy, s = img.width // 2 + rnd.randrange(-20, 20), img.height // 2 + rnd.randrange(-10, 10), size[1] // 3
    d.rectangle([cx - s, cy - s, cx + s, cy + s], fill=(200, 30, 35), outline=(90, 10, 10), width=4)  # body
    d.rectangle([cx - s * 0.7, cy - s * 0.75, cx + s * 0.7, cy - s * 0.05], fill=(245, 245, 245))  # face
    for ex in (-0.35, 0.35):
        d.ellipse([cx + ex * s - 9, cy - s * 0.5 - 9, cx + ex * s + 9, cy - s * 0.5 + 9], fill=(20, 20, 20))
    d.line([cx, cy - s, cx, cy - s * 1.6], fill=(60, 60, 60), width=5)  # antenna
    d.ellipse([cx - 10, cy - s * 1.6 - 10, cx + 10, cy - s * 1.6 + 10], fill=(250, 210, 30))
    for fx in (-0.6, 0.6):  # feet
        d.rectangle([cx + fx * s - 14, cy + s, cx + fx * s + 14, cy + s * 1.3], fill=(40, 60, 200))
    img = img.rotate(angle, resample=Image.BICUBIC, fillcolor=bg)
    return img.resize(size, Image.LANCZOS)


if __name__ == "__main__":
    sizes = [(160, 160), (200, 150), (150, 200), (180, 180), (240, 180)]
    for i in range(5):
        im = robot(sizes[i], [-8, 5, 0, 12, -3][i], BACKGROUNDS[i], i)
        im.save(f"scripts/demo/subject/robot-{i}.png", optimize=True)
    print("wrote scripts/demo/subject/robot-{0..4}.png")
