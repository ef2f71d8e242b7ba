/*
 * tensor.h — a float32 tensor of up to 4 dimensions, NCHW, owning or a view.
 *
 * Kernels take raw pointers and dimensions (nn/<op>.h); a tensor is the
 * bookkeeping model code keeps around them. Owning tensors come from the
 * context's allocator; views point into an arena (weights, LoRA state,
 * activations each have one) or into someone else's tensor and never free.
 */
#ifndef BOOTH_NN_TENSOR_H
#define BOOTH_NN_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/arena.h"
#include "nn/backend.h"

#define NN_MAX_DIMS 4

typedef struct nn_tensor {
    float *data;
    int ndim;
    int64_t shape[NN_MAX_DIMS];
    nn_ctx_t *owner; /* non-NULL: data was allocated by this context and is freed with the tensor */
} nn_tensor_t;

int64_t nn_shape_numel(int ndim, const int64_t *shape);
static inline int64_t nn_tensor_numel(const nn_tensor_t *t) { return nn_shape_numel(t->ndim, t->shape); }
static inline size_t nn_tensor_bytes(const nn_tensor_t *t) { return (size_t)nn_tensor_numel(t) * sizeof(float); }

/* A view of existing memory. */
nn_tensor_t nn_tensor_view(float *data, int ndim, const int64_t *shape);
/* Owning tensor in ctx's memory space (uninitialised). Returns 0 or BT_ENOMEM/BT_EINVAL. */
int nn_tensor_alloc(nn_tensor_t *t, nn_ctx_t *ctx, int ndim, const int64_t *shape);
/* A view carved from an arena. Returns 0 or BT_ENOMEM (arena full) / BT_EINVAL. */
int nn_tensor_arena(nn_tensor_t *t, bt_arena_t *arena, int ndim, const int64_t *shape);
/* Frees owned data; always leaves *t empty. Safe twice. */
void nn_tensor_free(nn_tensor_t *t);
/* Same rank and dims. */
bool nn_tensor_same_shape(const nn_tensor_t *a, const nn_tensor_t *b);
/* Reinterprets the same data with another shape of equal element count. */
int nn_tensor_reshape(nn_tensor_t *t, int ndim, const int64_t *shape);
/* "[2, 4, 16, 16]" */
char *nn_tensor_shape_str(const nn_tensor_t *t, char *buf, size_t len);

#endif
