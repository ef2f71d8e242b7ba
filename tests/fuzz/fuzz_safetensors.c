/*
 * fuzz_safetensors.c — the safetensors reader (storage/safetensors.c): header,
 * metadata and every tensor, read as float as the model loader does.
 *
 * Invariants: a file that opens has tensors whose bytes are dtype x shape and
 * lie inside the file; every name is found by st_find; a refusal says why.
 */
#include <stdlib.h>
#include <string.h>

#include "storage/safetensors.h"
#include "tests/fuzz/fuzz.h"

FUZZ_TARGET(safetensors)
{
    st_file_t *f = st_open(fz_file(0, data, size));
    if (!f) {
        fz_failed(1, "st_open");
        return 0;
    }
    for (int i = 0; i < st_count(f); i++) {
        const st_tensor_t *t = st_at(f, i);
        int64_t n = st_numel(t);
        if (n < 0 || (uint64_t)n * st_dtype_size(t->dtype) != t->nbytes || t->nbytes > size)
            fz_bug("tensor '%s': %lld elements of %zu bytes in %zu bytes, file of %zu", t->name, (long long)n,
                   st_dtype_size(t->dtype), t->nbytes, size);
        const st_tensor_t *g = st_find(f, t->name);
        if (!g || strcmp(g->name, t->name)) fz_bug("st_find('%s') does not find it", t->name);
        char shape[256];
        st_shape_str(t->ndim, t->shape, shape, sizeof shape);
        float *x = malloc((size_t)(n ? n : 1) * sizeof *x);
        double *d = malloc((size_t)(n ? n : 1) * sizeof *d);
        int64_t *q = malloc((size_t)(n ? n : 1) * sizeof *q);
        if (!x || !d || !q) abort();
        st_read_f32(t, x);
        st_read_f64(t, d);
        (void)st_read_i64(t, q);
        free(x);
        free(d);
        free(q);
    }
    for (int i = 0; i < st_metadata_count(f); i++) {
        const char *k, *v;
        st_metadata_at(f, i, &k, &v);
        if (!k || !v || st_metadata(f, k) == NULL) fz_bug("metadata entry %d cannot be found again", i);
    }
    st_close(&f);
    return 0;
}
