// The fuzz targets' bodies, shared by the libFuzzer programs (tests/fuzz/fuzz_*.c, built by
// tests/fuzz/run.sh) and the regression replay (tests/test_fuzz_regressions.c, a normal ctest
// test): one function per target, input bytes in, nothing out. A target returns normally for
// every input, valid or not; a crash, a sanitizer report, an exit or a hang is a finding.
#pragma once
#include <stdint.h>
#include <string.h>

#include "runtime/config.h"
#include "runtime/ep_cli.h"
#include "runtime/moe_mode.h"
#include "runtime/safetensors.h"
#include "runtime/tokenizer.h"

// A NUL-terminated copy of data[0..size), for parsers that take C strings.
static char *fuzz_cstr(const uint8_t *data, size_t size) {
    char *s = xmalloc(size + 1);
    if (size) memcpy(s, data, size);
    s[size] = 0;
    return s;
}

// Reads every byte the parser claims is tensor data: a pointer or size that strays outside
// the input is then an AddressSanitizer report here rather than later in a kernel.
static unsigned fuzz_touch(const void *p, size_t n) {
    const volatile uint8_t *b = p;
    return n ? (unsigned)(b[0] ^ b[n - 1] ^ b[n / 2]) : 0u;
}

// safetensors image: header length, JSON header, data (st_parse, the reader's only parser).
static void fuzz_safetensors(const uint8_t *data, size_t size) {
    // An exact-size heap copy, so that a read one byte past the end is caught.
    uint8_t *buf = xmalloc(size ? size : 1);
    if (size) memcpy(buf, data, size);
    st_tensor *ts;
    int n;
    llamoe_err err;
    if (st_parse("fuzz.safetensors", buf, size, &ts, &n, &err) >= 0) {
        unsigned sink = 0;
        for (int i = 0; i < n; i++) {
            sink += fuzz_touch(ts[i].data, ts[i].nbytes);
            size_t count = 1;
            for (int d = 0; d < ts[i].ndim; d++) count *= (size_t)ts[i].shape[d];
            if (count * dtype_size(ts[i].dtype) != ts[i].nbytes) __builtin_trap();   // the promise st_parse makes
            free(ts[i].name);
        }
        free(ts);
        (void)sink;
    }
    free(buf);
}

// model.safetensors.index.json text.
static void fuzz_st_index(const uint8_t *data, size_t size) {
    char *s = fuzz_cstr(data, size);
    int n;
    llamoe_err err;
    st_index_parse("fuzz.index.json", s, size, &n, &err);
    free(s);
}

// config.json, then generation_config.json: the input is split at its first NUL byte.
static void fuzz_config(const uint8_t *data, size_t size) {
    char *s = fuzz_cstr(data, size);
    const char *gen = NULL;
    const uint8_t *nul = memchr(data, 0, size);
    if (nul) gen = s + (nul - data) + 1;
    llama_config c;
    llamoe_err err;
    if (config_parse(&c, "config.json", s, &err) == 0) {
        if (gen) config_parse_generation(&c, "generation_config.json", gen, &err);
        for (int i = 0; i < c.n_eos; i++)
            if (c.eos_ids[i] < 0 || c.eos_ids[i] >= c.vocab_size) __builtin_trap();
    }
    free(s);
}

// tokenizer.json, then a text to encode after the first NUL byte (a fixed one without it);
// the ids are decoded and streamed back.
static void fuzz_tokenizer(const uint8_t *data, size_t size) {
    const uint8_t *nul = memchr(data, 0, size);
    size_t json_len = nul ? (size_t)(nul - data) : size;
    static const char fixed[] = "Hello, world! It's 2024: caf\xc3\xa9 \xe2\x82\xac <s> <|begin_of_text|>  x\n\n";
    const char *text = nul ? (const char *)nul + 1 : fixed;
    size_t text_len = nul ? size - json_len - 1 : sizeof fixed - 1;
    if (text_len > 4096) text_len = 4096;   // the encoder's speed is bench_tokenizer's business
    llamoe_err err;
    tokenizer *t = tokenizer_load_mem("tokenizer.json", (const char *)data, json_len, &err);
    if (!t) return;
    for (int special = 0; special < 2; special++) {
        int32_t *ids;
        int n;
        if (tokenizer_encode(t, text, text_len, special, special, &ids, &n, &err) != 0) continue;
        char *out;
        size_t out_len;
        if (tokenizer_decode(t, ids, n, &out, &out_len, &err) == 0) free(out);
        tokenizer_stream *st = tokenizer_stream_new(t);
        size_t len;
        for (int i = 0; i < n; i++) tokenizer_stream_push(st, ids[i], &len);
        tokenizer_stream_flush(st, &len);
        tokenizer_stream_free(st);
        for (int i = 0; i < n; i++) tokenizer_piece(t, ids[i], &len);
        free(ids);
    }
    int32_t bad[3] = {-1, tokenizer_vocab_size(t), INT32_MAX};
    char *out;
    size_t out_len;
    if (tokenizer_decode(t, bad, 3, &out, &out_len, &err) == 0) __builtin_trap();   // must refuse
    tokenizer_bos_id(t);
    tokenizer_free(t);
}

// A --prompts file, with the bundled tokenizer for the text lines (loaded once).
static const tokenizer *fuzz_prompts_tokenizer(void) {
    static tokenizer *tok;
    if (!tok) {
        llamoe_err err;
        tok = tokenizer_load(LLAMOE_SOURCE_DIR "/models/stories260k/tokenizer.json", &err);
        if (!tok) die("%s", err.msg);
    }
    return tok;
}

static void fuzz_prompts(const uint8_t *data, size_t size) {
    char *s = fuzz_cstr(data, size);
    prompt *ps;
    int n;
    llamoe_err err;
    int chat = size > 0 && data[0] == '#';   // some inputs ask for the chat wrapper (refused: not Llama 3)
    if (prompts_parse("fuzz.txt", s, size, fuzz_prompts_tokenizer(), chat, &ps, &n, &err) == 0) {
        if (n < 1) __builtin_trap();
        prompts_free(ps, n);
    }
    free(s);
}

// llamoe-ep's argument vector: the input split at NUL bytes, argv[0] added.
static void fuzz_cli(const uint8_t *data, size_t size) {
    enum { MAX_ARGS = 64 };
    char *s = fuzz_cstr(data, size);
    char *argv[MAX_ARGS + 2];
    int argc = 0;
    argv[argc++] = "llamoe-ep";
    for (size_t i = 0; i <= size && argc <= MAX_ARGS;) {
        argv[argc++] = s + i;
        i += strlen(s + i) + 1;
    }
    argv[argc] = NULL;
    ep_options o;
    llamoe_err err;
    if (ep_parse_args(argc, argv, &o, &err) == 0) {
        if (o.moe) {   // the one option llamoe-ep parses further before loading anything
            moe_mode m;
            if (moe_mode_parse(o.moe, &m, &err) == 0) m.drop = o.drop, moe_mode_check(&m, 1 << 20, &err);
        }
        if (o.prompt_ids) {
            prompt p;
            if (parse_id_list(o.prompt_ids, &p) == 0) free(p.ids);
        }
        if (o.prompt_text) {
            prompt p;
            if (prompt_encode(fuzz_prompts_tokenizer(), o.prompt_text, o.chat, &p, "-p", &err) == 0) free(p.ids);
        }
    }
    free(s);
}

typedef struct { const char *name; void (*fn)(const uint8_t *, size_t); } fuzz_target;
static const fuzz_target FUZZ_TARGETS[] = {
    {"safetensors", fuzz_safetensors}, {"st_index", fuzz_st_index}, {"config", fuzz_config},
    {"tokenizer", fuzz_tokenizer},     {"prompts", fuzz_prompts},   {"cli", fuzz_cli},
};
#define N_FUZZ_TARGETS ((int)(sizeof FUZZ_TARGETS / sizeof FUZZ_TARGETS[0]))
