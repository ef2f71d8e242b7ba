/*
 * font.c — booth's built-in bitmap font and the text functions of image.h.
 *
 * The glyphs were drawn for booth: 5 pixels wide and 9 tall (cap height 7, rows
 * 7-8 for descenders), advanced 6 pixels per character and 10 per line. They are
 * kept as ASCII art, 16 glyphs side by side per block in code-point order from
 * ' ' (32) to '~' (126), so a glyph can be read and corrected in the source;
 * a pixel is set where the art has '#'. Drawing reads the art directly, which
 * costs nothing next to the image work around it and needs no table built at
 * start-up.
 */
#include <string.h>

#include "common/image.h"

#define S_W 5      /* glyph width */
#define S_H 9      /* glyph height */
#define S_FIRST 32 /* ' ' */
#define S_LAST 126 /* '~' */
#define S_PER_ROW 16

/* clang-format off */
static const char *const s_art[][S_H] = {
    {
    /*       !     "     #     $     %     &     '     (     )     *     +     ,     -     .     / */
    "..... ..#.. .#.#. .#.#. ..#.. ##... .##.. ..#.. ...#. .#... ..... ..... ..... ..... ..... ....#",
    "..... ..#.. .#.#. .#.#. .#### ##..# #..#. ..#.. ..#.. ..#.. ..#.. ..#.. ..... ..... ..... ....#",
    "..... ..#.. .#.#. ##### #.#.. ...#. #.#.. .#... .#... ...#. #.#.# ..#.. ..... ..... ..... ...#.",
    "..... ..#.. ..... .#.#. .###. ..#.. .#... ..... .#... ...#. .###. ##### ..... ##### ..... ..#..",
    "..... ..#.. ..... ##### ..#.# .#... #.#.# ..... .#... ...#. #.#.# ..#.. ..... ..... ..... .#...",
    "..... ..... ..... .#.#. ####. #..## #..#. ..... ..#.. ..#.. ..#.. ..#.. .##.. ..... .##.. #....",
    "..... ..#.. ..... .#.#. ..#.. ...## .##.# ..... ...#. .#... ..... ..... ..#.. ..... .##.. #....",
    "..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... .#... ..... ..... .....",
    "..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... .....",
    },
    {
    /* 0     1     2     3     4     5     6     7     8     9     :     ;     <     =     >     ? */
    ".###. ..#.. .###. ####. ...#. ##### ..##. ##### .###. .###. ..... ..... ...#. ..... .#... .###.",
    "#...# .##.. #...# ....# ..##. #.... .#... ....# #...# #...# .##.. .##.. ..#.. ..... ..#.. #...#",
    "#..## ..#.. ....# ....# .#.#. ####. #.... ...#. #...# #...# .##.. .##.. .#... ##### ...#. ....#",
    "#.#.# ..#.. ...#. .###. #..#. ....# ####. ..#.. .###. .#### ..... ..... #.... ..... ....# ...#.",
    "##..# ..#.. ..#.. ....# ##### ....# #...# .#... #...# ....# .##.. .##.. .#... ##### ...#. ..#..",
    "#...# ..#.. .#... ....# ...#. #...# #...# .#... #...# ...#. .##.. ..#.. ..#.. ..... ..#.. .....",
    ".###. .###. ##### ####. ...#. .###. .###. .#... .###. .##.. ..... .#... ...#. ..... .#... ..#..",
    "..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... .....",
    "..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... .....",
    },
    {
    /* @     A     B     C     D     E     F     G     H     I     J     K     L     M     N     O */
    ".###. .###. ####. .###. ###.. ##### ##### .###. #...# .###. ..### #...# #.... #...# #...# .###.",
    "#...# #...# #...# #...# #..#. #.... #.... #...# #...# ..#.. ...#. #..#. #.... ##.## #...# #...#",
    "#.### #...# #...# #.... #...# #.... #.... #.... #...# ..#.. ...#. #.#.. #.... #.#.# ##..# #...#",
    "#.#.# ##### ####. #.... #...# ####. ####. #.### ##### ..#.. ...#. ##... #.... #.#.# #.#.# #...#",
    "#.##. #...# #...# #.... #...# #.... #.... #...# #...# ..#.. ...#. #.#.. #.... #...# #..## #...#",
    "#.... #...# #...# #...# #..#. #.... #.... #...# #...# ..#.. #..#. #..#. #.... #...# #...# #...#",
    ".#### #...# ####. .###. ###.. ##### #.... .#### #...# .###. .##.. #...# ##### #...# #...# .###.",
    "..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... .....",
    "..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... .....",
    },
    {
    /* P     Q     R     S     T     U     V     W     X     Y     Z     [     \     ]     ^     _ */
    "####. .###. ####. .#### ##### #...# #...# #...# #...# #...# ##### .###. #.... .###. ..#.. .....",
    "#...# #...# #...# #.... ..#.. #...# #...# #...# #...# #...# ....# .#... #.... ...#. .#.#. .....",
    "#...# #...# #...# #.... ..#.. #...# #...# #...# .#.#. .#.#. ...#. .#... .#... ...#. #...# .....",
    "####. #...# ####. .###. ..#.. #...# #...# #.#.# ..#.. ..#.. ..#.. .#... ..#.. ...#. ..... .....",
    "#.... #.#.# #.#.. ....# ..#.. #...# #...# #.#.# .#.#. ..#.. .#... .#... ...#. ...#. ..... .....",
    "#.... #..#. #..#. ....# ..#.. #...# .#.#. #.#.# #...# ..#.. #.... .#... ....# ...#. ..... .....",
    "#.... .##.# #...# ####. ..#.. .###. ..#.. .#.#. #...# ..#.. ##### .###. ....# .###. ..... .....",
    "..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... #####",
    "..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... ..... .....",
    },
    {
    /* `     a     b     c     d     e     f     g     h     i     j     k     l     m     n     o */
    ".#... ..... #.... ..... ....# ..... ..##. ..... #.... ..#.. ...#. #.... .##.. ..... ..... .....",
    "..#.. ..... #.... ..... ....# ..... .#..# ..... #.... ..... ..... #.... ..#.. ..... ..... .....",
    "...#. .###. ####. .###. .#### .###. .#... .#### #.##. .##.. ..##. #..#. ..#.. ##.#. #.##. .###.",
    "..... ....# #...# #.... #...# #...# ###.. #...# ##..# ..#.. ...#. #.#.. ..#.. #.#.# ##..# #...#",
    "..... .#### #...# #.... #...# ##### .#... #...# #...# ..#.. ...#. ##... ..#.. #.#.# #...# #...#",
    "..... #...# #...# #...# #...# #.... .#... #...# #...# ..#.. ...#. #.#.. ..#.. #.#.# #...# #...#",
    "..... .#### ####. .###. .#### .###. .#... .#### #...# .###. ...#. #..#. .###. #.#.# #...# .###.",
    "..... ..... ..... ..... ..... ..... ..... ....# ..... ..... #..#. ..... ..... ..... ..... .....",
    "..... ..... ..... ..... ..... ..... ..... .###. ..... ..... .##.. ..... ..... ..... ..... .....",
    },
    {
    /* p     q     r     s     t     u     v     w     x     y     z     {     |     }     ~ */
    "..... ..... ..... ..... .#... ..... ..... ..... ..... ..... ..... ...## ..#.. ##... .....",
    "..... ..... ..... ..... .#... ..... ..... ..... ..... ..... ..... ..#.. ..#.. ..#.. .....",
    "####. .#### #.##. .#### ###.. #...# #...# #...# #...# #...# ##### ..#.. ..#.. ..#.. .#...",
    "#...# #...# ##..# #.... .#... #...# #...# #...# .#.#. #...# ...#. .#... ..#.. ...#. #.#.#",
    "#...# #...# #.... .###. .#... #...# #...# #.#.# ..#.. #...# ..#.. ..#.. ..#.. ..#.. ...#.",
    "#...# #...# #.... ....# .#..# #..## .#.#. #.#.# .#.#. #...# .#... ..#.. ..#.. ..#.. .....",
    "####. .#### #.... ####. ..##. .##.# ..#.. .#.#. #...# .#### ##### ...## ..#.. ##... .....",
    "#.... ....# ..... ..... ..... ..... ..... ..... ..... ....# ..... ..... ..#.. ..... .....",
    "#.... ....# ..... ..... ..... ..... ..... ..... ..... .###. ..... ..... ..... ..... .....",
    },
};
/* clang-format on */

static bool s_pixel(int code, int gx, int gy)
{
    if (code < S_FIRST || code > S_LAST) {
        /* anything else: a hollow box the size of a capital */
        return gy < 7 && (gx == 0 || gx == S_W - 1 || gy == 0 || gy == 6);
    }
    int i = code - S_FIRST;
    return s_art[i / S_PER_ROW][gy][(i % S_PER_ROW) * (S_W + 1) + gx] == '#';
}

/* Next character of a line: ASCII as itself, a UTF-8 sequence (or a stray byte)
 * as -1. Returns the byte count consumed, 0 at the end of the line. */
static int s_next(const char *s, int *code)
{
    unsigned char c = (unsigned char)*s;
    if (c == '\0' || c == '\n') return 0;
    if (c < 0x80) {
        *code = c == '\t' ? ' ' : c;
        return 1;
    }
    int n = 1;
    while (n < 4 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n++;
    *code = -1;
    return n;
}

static int s_line_chars(const char *s)
{
    int n = 0, code, k;
    while ((k = s_next(s, &code)) > 0)
        s += k, n++;
    return n;
}

void bt_img_draw_text(bt_img_t *img, int x, int y, const char *text, int scale, uint32_t rgb)
{
    if (!text) return;
    if (scale < 1) scale = 1;
    int cx = x;
    for (const char *s = text; *s;) {
        if (*s == '\n') {
            s++;
            cx = x;
            y += BT_FONT_LINE * scale;
            continue;
        }
        int code, k = s_next(s, &code);
        s += k;
        if (code != ' ')
            for (int gy = 0; gy < S_H; gy++)
                for (int gx = 0; gx < S_W; gx++)
                    if (s_pixel(code, gx, gy))
                        bt_img_fill_rect(img, cx + gx * scale, y + gy * scale, scale, scale, rgb);
        cx += BT_FONT_ADVANCE * scale;
        if (cx > img->width && !strchr(s, '\n')) return; /* the rest is off the image */
    }
}

int bt_img_text_width(const char *text, int scale)
{
    if (!text) return 0;
    if (scale < 1) scale = 1;
    int best = 0;
    for (const char *s = text;;) {
        int n = s_line_chars(s);
        if (n > best) best = n;
        s = strchr(s, '\n');
        if (!s) break;
        s++;
    }
    /* the last column of the last glyph is spacing, not ink */
    return best ? (best * BT_FONT_ADVANCE - 1) * scale : 0;
}

int bt_img_text_height(const char *text, int scale)
{
    if (!text || !*text) return 0;
    if (scale < 1) scale = 1;
    int lines = 1;
    for (const char *s = text; (s = strchr(s, '\n')); s++)
        lines++;
    return lines * BT_FONT_LINE * scale;
}

/* Appends n bytes to out (always NUL-terminated); false when it did not fit. */
static bool s_put(char *out, size_t out_len, size_t *pos, const char *s, size_t n)
{
    if (*pos + n + 1 > out_len) return false;
    memcpy(out + *pos, s, n);
    *pos += n;
    out[*pos] = '\0';
    return true;
}

int bt_img_text_wrap(const char *text, int max_width, int scale, int max_lines, char *out, size_t out_len)
{
    if (!out || out_len == 0) return 0;
    out[0] = '\0';
    if (!text || !*text) return 0;
    if (scale < 1) scale = 1;
    int cap = (max_width + scale) / (BT_FONT_ADVANCE * scale); /* characters per line */
    if (cap < 1) cap = 1;
    size_t pos = 0;
    int lines = 1, used = 0; /* characters on the current line */
    const char *s = text;
    while (*s) {
        if (*s == '\n' || *s == ' ') {
            /* explicit break, or a space: only kept between words on one line */
            if (*s == '\n') {
                if (max_lines && lines == max_lines) goto out_truncated;
                if (!s_put(out, out_len, &pos, "\n", 1)) goto out_truncated;
                lines++, used = 0;
            }
            s++;
            continue;
        }
        /* the next word, in characters and bytes */
        const char *w = s;
        int wchars = 0, code, k;
        while (*w && *w != ' ' && *w != '\n' && (k = s_next(w, &code)) > 0)
            w += k, wchars++;
        int need = (used ? 1 : 0) + wchars;
        if (used && used + need > cap) {
            if (max_lines && lines == max_lines) goto out_truncated;
            if (!s_put(out, out_len, &pos, "\n", 1)) goto out_truncated;
            lines++, used = 0;
        } else if (used) {
            if (!s_put(out, out_len, &pos, " ", 1)) goto out_truncated;
            used++;
        }
        /* the word itself, broken where it is longer than a line */
        while (s < w) {
            if (used == cap) {
                if (max_lines && lines == max_lines) goto out_truncated;
                if (!s_put(out, out_len, &pos, "\n", 1)) goto out_truncated;
                lines++, used = 0;
            }
            k = s_next(s, &code);
            if (!s_put(out, out_len, &pos, s, (size_t)k)) goto out_truncated;
            s += k, used++;
        }
    }
    return lines;
out_truncated:
    /* end the visible text with "..." on the last line, within the width */
    {
        size_t line_start = pos;
        while (line_start > 0 && out[line_start - 1] != '\n')
            line_start--;
        int room = cap - 3;
        /* drop characters (whole UTF-8 sequences) until "..." fits */
        while (pos > line_start && (s_line_chars(out + line_start) > room || pos + 4 > out_len)) {
            pos--;
            while (pos > line_start && ((unsigned char)out[pos] & 0xC0) == 0x80)
                pos--;
            out[pos] = '\0';
        }
        while (pos > line_start && out[pos - 1] == ' ')
            out[--pos] = '\0';
        s_put(out, out_len, &pos, "...", cap >= 3 ? 3 : (size_t)cap);
    }
    return lines;
}
