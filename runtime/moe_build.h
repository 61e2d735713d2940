// MoE construction: the router and this rank's experts of every MoE layer, built at load
// from a dense checkpoint (identity, upcycle, production) or read from a Mixtral one.
#pragma once
#include "runtime/model.h"

// Fills layers[l]: the dense FFN views, the router and this rank's experts for m->moe.
int moe_build_layer(model *m, int l, llamoe_err *err);
void moe_free_layer(model *m, layer_weights *L);

// Identity-mode slice of expert e of E over an FFN of width ffn: [start, start + width).
// Widths differ by at most one (the first ffn % E slices are one wider).
void identity_slice(int ffn, int E, int e, int *start, int *width);
