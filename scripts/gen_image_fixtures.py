#!/usr/bin/python3
"""Test images and PIL's answers for them: tests/fixtures/images/.

Writes small PNG and JPEG files of every kind booth must read (and some it
must refuse), plus reference.safetensors holding, as U8 [H, W, C] tensors,
what PIL makes of them:

  png.<name>, jpeg.<name>   decoded pixels (after ImageOps.exif_transpose),
                            converted to RGB, or RGBA when the file has alpha;
                            16-bit gray is PIL's raw value >> 8 (PIL's own
                            convert("RGB") clips I;16 instead of scaling)
  resize.<src>.<filter>.<W>x<H>   Image.resize((W, H), filter)
  crop.<src>.<filter>.<res>       transforms.Resize(res) + CenterCrop(res), done
                                  with PIL and torchvision's formulas (written
                                  out below; torchvision is not needed)
  f32.to_chw.in / .out      ToTensor + Normalize([0.5], [0.5]) in float32
  f32.from_chw.in / .out    diffusers: ((x / 2 + 0.5).clamp(0, 1) * 255).round()

The EXIF blocks are built here byte by byte (both byte orders, extra tags,
and hostile variants), not by PIL. Run with Debian's python3-pil and numpy:

    /usr/bin/python3 scripts/gen_image_fixtures.py [OUTDIR]

make test never runs this; the output is committed.
"""
import io
import json
import os
import struct
import sys
import zlib

import numpy as np
import PIL
from PIL import Image, ImageOps, PngImagePlugin

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "images")
REFS = {}


def ref(name, arr):
    arr = np.ascontiguousarray(arr)
    if arr.dtype == np.uint8 and arr.ndim == 2:
        arr = arr[:, :, None]
    REFS[name] = arr


def save_bytes(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


def pil_bytes(im, fmt, **kw):
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def decoded(im):
    """PIL's pixels the way booth returns them: RGB, or RGBA with alpha."""
    im = ImageOps.exif_transpose(im)
    has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
    return np.asarray(im.convert("RGBA" if has_alpha else "RGB"))


# ---------------------------------------------------------------- source images

def photo(w, h, seed):
    """Smooth gradients, a hard edge and some noise: something for a filter to do."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * x / (w - 1)
    g = 255 * y / (h - 1)
    b = 128 + 100 * np.sin(x / 3.0) * np.cos(y / 4.0)
    img = np.stack([r, g, b], -1)
    img[(x > w * 0.6) & (y < h * 0.4)] = [250, 20, 200]  # a magenta block
    img += rng.normal(0, 12, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# -------------------------------------------------------------- PNG by hand

def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_raw(w, h, depth, color, rows_bytes, interlace=0, extra=b""):
    """rows_bytes: the filtered scanline stream (filter bytes included)."""
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, interlace)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + extra +
            png_chunk(b"IDAT", zlib.compress(rows_bytes, 9)) + png_chunk(b"IEND", b""))


def rows_of(arr_bytes_per_row):
    return b"".join(b"\x00" + r for r in arr_bytes_per_row)


def png16(arr16, color):
    h, w = arr16.shape[:2]
    rows = [arr16[y].astype(">u2").tobytes() for y in range(h)]
    return png_raw(w, h, 16, color, rows_of(rows))


def png_gray4(arr4):
    h, w = arr4.shape
    rows = []
    for y in range(h):
        v = list(arr4[y]) + ([0] if w % 2 else [])
        rows.append(bytes((v[i] << 4) | v[i + 1] for i in range(0, len(v), 2)))
    return png_raw(w, h, 4, 0, rows_of(rows))


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def png_adam7(rgb):
    h, w = rgb.shape[:2]
    stream = b""
    for x0, y0, dx, dy in ADAM7:
        sub = rgb[y0::dy, x0::dx]
        if sub.shape[0] == 0 or sub.shape[1] == 0:
            continue
        stream += rows_of([sub[y].tobytes() for y in range(sub.shape[0])])
    return png_raw(w, h, 8, 2, stream, interlace=1)


# ------------------------------------------------------------- EXIF by hand

TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8}


def tiff(entries, le, next_ifd=0, ifd_offset=8, count_override=None):
    """A TIFF header and IFD0. entries: (tag, type, count, payload bytes or int).
    Payloads over 4 bytes go after the IFD, as the standard lays them out."""
    e = "<" if le else ">"
    head = (b"II" if le else b"MM") + struct.pack(e + "HI", 42, ifd_offset)
    n = len(entries)
    data_at = ifd_offset + 2 + 12 * n + 4
    ifd, data = b"", b""
    for tag, typ, count, payload in sorted(entries, key=lambda t: t[0]):
        if isinstance(payload, int):
            if typ == 3:
                val = struct.pack(e + "HH", payload, 0)
            elif typ == 4:
                val = struct.pack(e + "I", payload)
            else:
                val = bytes([payload, 0, 0, 0])
        elif len(payload) <= 4:
            val = payload.ljust(4, b"\0")
        else:
            val = struct.pack(e + "I", data_at + len(data))
            data += payload
        ifd += struct.pack(e + "HHI", tag, typ, count) + val
    count = n if count_override is None else count_override
    body = struct.pack(e + "H", count) + ifd + struct.pack(e + "I", next_ifd) + data
    pad = b"\0" * max(0, ifd_offset - 8)
    return head + pad + body


def exif_orientation(v, le):
    e = "<" if le else ">"
    return tiff([
        (0x010F, 2, 6, b"booth\0"),                       # Make
        (0x0112, 3, 1, v),                                # Orientation
        (0x011A, 5, 1, struct.pack(e + "II", 72, 1)),     # XResolution
        (0x0131, 2, 11, b"gen_image\0\0"),                # Software
    ], le)


def app1(tiff_bytes):
    payload = b"Exif\0\0" + tiff_bytes
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def with_app1(jpeg, seg):
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + seg + jpeg[2:]


def patch_sof(jpeg, w, h):
    i = 2
    while i < len(jpeg):
        assert jpeg[i] == 0xFF
        marker = jpeg[i + 1]
        length = struct.unpack(">H", jpeg[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            return jpeg[:i + 5] + struct.pack(">HH", h, w) + jpeg[i + 9:]
        i += 2 + length
    raise ValueError("no SOF")


def find_marker(jpeg, marker):
    i = 2
    while i < len(jpeg):
        m = jpeg[i + 1]
        length = struct.unpack(">H", jpeg[i + 2:i + 4])[0]
        if m == marker:
            return i
        i += 2 + length
    raise ValueError("marker not found")


# ------------------------------------------------------------------ main

def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(os.path.join(OUT, f))

    rgb = photo(37, 29, 1)
    im_rgb = Image.fromarray(rgb, "RGB")

    # ---- PNG of every colour type and depth
    pngs = {}
    pngs["rgb"] = pil_bytes(im_rgb, "PNG")
    a = photo(23, 17, 2)
    alpha = np.tile(np.linspace(0, 255, 23).astype(np.uint8), (17, 1))
    alpha[:4] = 0
    alpha[-3:] = 255
    im_rgba = Image.fromarray(np.dstack([a, alpha]), "RGBA")
    pngs["rgba"] = pil_bytes(im_rgba, "PNG")
    im_gray = Image.fromarray(photo(19, 13, 3)[:, :, 1], "L")
    pngs["gray"] = pil_bytes(im_gray, "PNG")
    ga = photo(11, 7, 4)
    pngs["gray_alpha"] = pil_bytes(Image.fromarray(ga[:, :, :2], "LA"), "PNG")
    g16 = (np.arange(17 * 11).reshape(11, 17) * 331 + 7) % 65536
    pngs["gray16"] = pil_bytes(Image.fromarray(g16.astype(np.uint16), "I;16"), "PNG")
    rgb16 = ((np.arange(13 * 9 * 3).reshape(9, 13, 3) * 1201 + 99) % 65536).astype(np.uint16)
    pngs["rgb16"] = png16(rgb16, 2)
    rgba16 = ((np.arange(13 * 9 * 4).reshape(9, 13, 4) * 977 + 5) % 65536).astype(np.uint16)
    pngs["rgba16"] = png16(rgba16, 6)
    im_p = im_rgb.resize((21, 15)).quantize(16)
    pngs["palette"] = pil_bytes(im_p, "PNG")
    pngs["palette_trns"] = pil_bytes(im_p, "PNG", transparency=3)
    pngs["gray1"] = pil_bytes(Image.fromarray(photo(21, 9, 5)[:, :, 0] > 128), "PNG")
    g4 = (np.arange(15 * 7).reshape(7, 15) * 7) % 16
    pngs["gray4"] = png_gray4(g4)
    pngs["interlaced"] = png_adam7(photo(19, 14, 6))
    pngs["rgb_trns"] = pil_bytes(Image.fromarray(photo(9, 6, 7), "RGB"), "PNG", transparency=tuple(int(v) for v in photo(9, 6, 7)[0, 0]))
    pngs["exif6"] = pil_bytes(Image.fromarray(photo(12, 7, 8), "RGB"), "PNG", exif=b"Exif\0\0" + exif_orientation(6, True))
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a photo of sks dog\nSteps: 30, Sampler: DDIM")
    info.add_text("comment", "zipped " * 20, zip=True)
    info.add_itxt("title", "Caf\u00e9 \u2615")
    info.add_text("latin", "na\u00efve")  # stored Latin-1
    pngs["text"] = pil_bytes(Image.fromarray(photo(5, 4, 9), "RGB"), "PNG", pnginfo=info)
    for name, data in pngs.items():
        save_bytes(f"{name}.png", data)
        im = Image.open(io.BytesIO(data))
        if name == "gray16":
            v = (np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8)
            ref("png.gray16", np.dstack([v, v, v]))
        elif name == "gray4":
            v = (g4 * 17).astype(np.uint8)
            assert (np.asarray(im.convert("L")) == v).all()
            ref("png.gray4", np.dstack([v, v, v]))
        elif name in ("rgb16", "rgba16"):
            src = rgb16 if name == "rgb16" else rgba16
            got = decoded(im)
            assert (got == (src >> 8).astype(np.uint8)).all(), name  # PIL keeps the high byte
            ref(f"png.{name}", got)
        else:
            ref(f"png.{name}", decoded(im))
    assert REFS["png.exif6"].shape[:2] == (12, 7)  # PIL applied the rotation

    # ---- JPEG: an asymmetric 24x16 pattern in 8x8 blocks, eight orientations
    blocks = np.array([[[230, 30, 30], [30, 200, 40], [40, 60, 220]],
                       [[240, 240, 60], [250, 250, 250], [20, 20, 20]]], np.uint8)
    pattern = np.kron(blocks, np.ones((8, 8, 1), np.uint8))
    pattern[2:5, 2:14] = [255, 128, 0]  # an orange bar in the top left, off-centre
    base = pil_bytes(Image.fromarray(pattern, "RGB"), "JPEG", quality=95)
    for v in range(1, 9):
        data = with_app1(base, app1(exif_orientation(v, le=(v % 2 == 1))))
        save_bytes(f"orient{v}.jpg", data)
        ref(f"jpeg.orient{v}", decoded(Image.open(io.BytesIO(data))))
    assert REFS["jpeg.orient6"].shape[:2] == (24, 16)

    jpegs = {}
    jpegs["photo"] = pil_bytes(im_rgb, "JPEG", quality=90)  # 4:2:0, the common case
    jpegs["photo444"] = pil_bytes(im_rgb, "JPEG", quality=90, subsampling=0)
    jpegs["progressive"] = pil_bytes(im_rgb, "JPEG", quality=85, progressive=True)
    jpegs["gray"] = pil_bytes(im_gray, "JPEG", quality=90)
    jpegs["cmyk"] = pil_bytes(im_rgb.convert("CMYK"), "JPEG", quality=90)
    for name, data in jpegs.items():
        save_bytes(f"{name}.jpg", data)
        ref(f"jpeg.{name}", decoded(Image.open(io.BytesIO(data))))

    # ---- hostile EXIF: each must decode; orientation as documented in test_image.c
    def exif_jpeg(name, tiff_bytes):
        save_bytes(name, with_app1(base, app1(tiff_bytes)))

    exif_jpeg("exif_ifd_past_end.jpg", b"II" + struct.pack("<HI", 42, 0xFFFFFF00) + tiff([(0x0112, 3, 1, 6)], True)[8:])
    exif_jpeg("exif_loop.jpg", tiff([(0x010F, 2, 6, b"booth\0"), (0x8769, 4, 1, 8)], False, next_ifd=8))
    exif_jpeg("exif_count_lies.jpg", tiff([(0x0112, 3, 1, 6)], True, count_override=0xFFFF)[:8 + 2 + 12])
    exif_jpeg("exif_entry_cut.jpg", tiff([(0x0112, 3, 1, 6)], False)[:8 + 2 + 7])
    exif_jpeg("exif_bad_value.jpg", tiff([(0x0112, 3, 1, 9)], True))
    exif_jpeg("exif_short.jpg", b"MM\0*")
    two = with_app1(with_app1(base, app1(exif_orientation(8, False))), app1(exif_orientation(3, True)))
    save_bytes("exif_two_blocks.jpg", two)
    ref("jpeg.exif_two_blocks", decoded(Image.open(io.BytesIO(two))))

    # ---- broken files
    png = pngs["rgb"]
    idat = png.index(b"IDAT")
    save_bytes("truncated.png", png[:idat + 4 + (len(png) - idat) // 2])
    bad = bytearray(png)
    bad[idat + 20] ^= 0x55  # inside the zlib stream
    save_bytes("corrupt_data.png", bytes(bad))
    bad = bytearray(png)
    idat_len = struct.unpack(">I", png[idat - 4:idat])[0]
    bad[idat + 4 + idat_len] ^= 0x01  # the chunk's CRC
    save_bytes("corrupt_crc.png", bytes(bad))
    save_bytes("huge.png", png_raw(20000, 20000, 8, 0, b"\0" * 16))
    save_bytes("empty.png", b"")
    jp = jpegs["photo"]
    save_bytes("truncated.jpg", jp[:len(jp) * 6 // 10])
    save_bytes("huge.jpg", patch_sof(jp, 20000, 20000))
    dht = find_marker(jp, 0xC4)
    bad = bytearray(jp)
    bad[dht + 4] = 0x17  # table class 1, index 7: there are only 4
    save_bytes("corrupt.jpg", bytes(bad))
    save_bytes("not_image.txt", b"hello, this is not an image\n")
    save_bytes("photo.heic", b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 16)

    # ---- resize and crop references
    im_rgba_src = Image.open(io.BytesIO(pngs["rgba"]))
    im_gray_src = Image.open(io.BytesIO(pngs["gray"]))
    filters = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}
    cases = [("rgb", im_rgb, f, size) for f in ("bilinear", "bicubic", "lanczos")
             for size in [(16, 12), (53, 41), (10, 31), (3, 2)]]
    cases += [("rgb", im_rgb, "bicubic", (37, 12)), ("rgb", im_rgb, "bilinear", (20, 29)),
              ("rgb", im_rgb, "bilinear", (1, 1)), ("rgb", im_rgb, "bicubic", (200, 7)),
              ("gray", im_gray_src, "bicubic", (8, 6)), ("gray", im_gray_src, "bilinear", (30, 20)),
              ("rgba", im_rgba_src, "bicubic", (11, 8)), ("rgba", im_rgba_src, "bilinear", (40, 30))]
    for src, im, f, (w, h) in cases:
        ref(f"resize.{src}.{f}.{w}x{h}", np.asarray(im.resize((w, h), filters[f])))

    def resize_center_crop(im, res, f):
        # torchvision.transforms.functional: _compute_resized_output_size + center_crop
        w, h = im.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = res, int(res * long / short)
        nw, nh = (new_short, new_long) if w <= h else (new_long, new_short)
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), f)
        top = int(round((nh - res) / 2.0))
        left = int(round((nw - res) / 2.0))
        return im.crop((left, top, left + res, top + res))

    im_rgb_t = im_rgb.transpose(Image.TRANSPOSE)
    for src, im, f, res in [("rgb", im_rgb, "bilinear", 16), ("rgb", im_rgb, "bicubic", 20),
                            ("rgb", im_rgb, "bilinear", 40), ("rgbT", im_rgb_t, "bilinear", 20),
                            ("rgbT", im_rgb_t, "bicubic", 29)]:
        ref(f"crop.{src}.{f}.{res}", np.asarray(resize_center_crop(im, res, filters[f])))

    # ---- float conversions (float32 throughout, as torch and numpy do)
    ref("f32.to_chw.in", rgb)
    x = rgb.astype(np.float32) / np.float32(255)
    REFS["f32.to_chw.out"] = ((x - np.float32(0.5)) / np.float32(0.5)).transpose(2, 0, 1).astype(np.float32)
    rng = np.random.default_rng(10)
    y = rng.uniform(-1.3, 1.3, (3, 7, 11)).astype(np.float32)
    # values whose * 255 lands exactly on .5, to pin the half-to-even rounding
    y.flat[:6] = (np.array([0.5, 1.5, 2.5, 127.5, 128.5, 254.5], np.float32) / np.float32(255) - np.float32(0.5)) * 2
    y.flat[6:10] = [-1.0, 1.0, -5.0, 7.0]
    REFS["f32.from_chw.in"] = y
    v = np.clip(y / np.float32(2) + np.float32(0.5), 0, 1)
    REFS["f32.from_chw.out"] = np.round(v * np.float32(255)).astype(np.uint8).transpose(1, 2, 0)

    # ---- reference.safetensors
    header, blobs, off = {}, [], 0
    for name in sorted(REFS):
        arr = np.ascontiguousarray(REFS[name])
        dt = {np.dtype(np.uint8): "U8", np.dtype(np.float32): "F32"}[arr.dtype]
        b = arr.astype("<" + arr.dtype.str[1:]).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"generator": "scripts/gen_image_fixtures.py", "pil": PIL.__version__}
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)
    with open(os.path.join(OUT, "reference.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hj)) + hj + b"".join(blobs))

    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"{len(os.listdir(OUT))} files, {total} bytes in {OUT}")


if __name__ == "__main__":
    main()
