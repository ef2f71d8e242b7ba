/* tensor.c — shapes, views and owning tensors. */
#include "nn/tensor.h"

#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "nn/memory.h"

int64_t nn_shape_numel(int ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    return n;
}

static int s_set_shape(nn_tensor_t *t, int ndim, const int64_t *shape)
{
    if (ndim < 1 || ndim > NN_MAX_DIMS) return BT_EINVAL;
    t->ndim = ndim;
    for (int i = 0; i < NN_MAX_DIMS; i++) t->shape[i] = i < ndim ? shape[i] : 1;
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0) return BT_EINVAL;
    return BT_OK;
}

nn_tensor_t nn_tensor_view(float *data, int ndim, const int64_t *shape)
{
    nn_tensor_t t = {0};
    if (s_set_shape(&t, ndim, shape) == BT_OK) t.data = data;
    return t;
}

int nn_tensor_alloc(nn_tensor_t *t, nn_ctx_t *ctx, int ndim, const int64_t *shape)
{
    memset(t, 0, sizeof *t);
    int rc = s_set_shape(t, ndim, shape);
    if (rc) return rc;
    size_t bytes = nn_tensor_bytes(t);
    t->data = nn_alloc(ctx, bytes ? bytes : 1);
    if (!t->data) {
        BT_ERROR("cannot allocate a tensor of %zu bytes", bytes);
        return BT_ENOMEM;
    }
    t->owner = ctx;
    return BT_OK;
}

int nn_tensor_arena(nn_tensor_t *t, bt_arena_t *arena, int ndim, const int64_t *shape)
{
    memset(t, 0, sizeof *t);
    int rc = s_set_shape(t, ndim, shape);
    if (rc) return rc;
    t->data = bt_arena_alloc(arena, nn_tensor_bytes(t));
    return t->data ? BT_OK : BT_ENOMEM;
}

void nn_tensor_free(nn_tensor_t *t)
{
    if (t->owner && t->data) nn_free(t->owner, t->data);
    memset(t, 0, sizeof *t);
}

bool nn_tensor_same_shape(const nn_tensor_t *a, const nn_tensor_t *b)
{
    if (a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return false;
    return true;
}

int nn_tensor_reshape(nn_tensor_t *t, int ndim, const int64_t *shape)
{
    if (nn_shape_numel(ndim, shape) != nn_tensor_numel(t)) return BT_ESHAPE;
    return s_set_shape(t, ndim, shape);
}

char *nn_tensor_shape_str(const nn_tensor_t *t, char *buf, size_t len)
{
    size_t o = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < t->ndim && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    if (o < len) snprintf(buf + o, len - o, "]");
    return buf;
}
