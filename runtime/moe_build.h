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

// ---------------------------------------------------------------------------- moving experts
// Rebalancing (runtime/rebalance.h) refills slots with other experts while serving. An expert
// travels as two blocks: gate and up (w1 then w3, packed), and down (w2, packed); the layout a
// device backend keeps its experts in, so a device sends and receives them in place.
typedef struct {
    weight_t w[3];                  // shapes and dtype (data: see gate_up, down)
    uint8_t *gate_up, *down;        // backend memory (a host staging copy for a host source)
    size_t gate_up_bytes, down_bytes;
    uint8_t *staging;               // owned staging copy, or NULL
} expert_blocks;

// Shapes of logical expert e of layer l, packed (data NULL).
void moe_expert_shape(const model *m, int l, int e, weight_t w[3]);
// Logical expert e of layer l as this rank builds it from its own checkpoint, packed (w1, w3,
// w2 one after another; *bytes of them): what a rank that receives it must get. Free with free().
uint8_t *moe_expert_build(const model *m, int l, int e, size_t *bytes);
// Blocks to receive logical expert e of layer l into (backend memory, owned by b until install).
void moe_expert_alloc(const model *m, int l, int e, expert_blocks *b);
// The blocks of this rank's slot i of layer l, to send (moe_expert_source_done after sending).
void moe_expert_source(const model *m, int l, int i, expert_blocks *b);
void moe_expert_source_done(expert_blocks *b);
// Slot i of layer l now holds the expert in b (from moe_expert_alloc, filled); the slot's old
// weights are released. The model is const to the forward pass, but its layers' weights are
// what rebalancing changes: only between steps.
void moe_expert_install(const model *m, int l, int i, expert_blocks *b);
