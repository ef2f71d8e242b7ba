/*
 * half.h — IEEE binary16 and bfloat16 <-> float32 conversion.
 *
 * Model snapshots ship fp16 or bf16 weights; booth computes in float32 and
 * converts once at load. Float -> half rounds to nearest even and keeps inf/nan.
 */
#ifndef BOOTH_COMMON_HALF_H
#define BOOTH_COMMON_HALF_H

#include <stdint.h>
#include <string.h>

float bt_f16_to_f32(uint16_t h);
uint16_t bt_f32_to_f16(float f);

static inline float bt_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t bt_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet nan */
    u += 0x7fffu + ((u >> 16) & 1u);                                           /* round to nearest even */
    return (uint16_t)(u >> 16);
}

#endif
