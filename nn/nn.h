/*
 * nn.h — everything model code needs from nn/: the context, memory and the ops.
 */
#ifndef BOOTH_NN_NN_H
#define BOOTH_NN_NN_H

#include "nn/activation.h"
#include "nn/attention.h"
#include "nn/backend.h"
#include "nn/conv2d.h"
#include "nn/elementwise.h"
#include "nn/embedding.h"
#include "nn/linear.h"
#include "nn/loss.h"
#include "nn/memory.h"
#include "nn/norm.h"
#include "nn/optim.h"
#include "nn/ops.h"

#endif
