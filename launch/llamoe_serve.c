// llamoe-serve: an OpenAI-compatible HTTP server in front of the continuous-batching engine.
//   mpirun -np P llamoe-serve [-m DIR] [--moe MODE] [--host 127.0.0.1] [--port 8080] [options]
//
// Rank 0 serves HTTP/1.1 with libmicrohttpd (one thread per connection) and runs the engine
// loop on its main thread: each step it drops cancelled requests, admits queued ones into free
// KV slots and runs one engine step (runtime/engine.h), whose plan goes to every rank. The
// other ranks run engine steps until rank 0 ends the engine. HTTP threads never call MPI or the
// model: they parse a request, queue it, and read its tokens back from it, all under one mutex;
// only the engine loop talks to the other ranks. docs/serving.md describes the API.
#define _GNU_SOURCE   // memmem, POLLRDHUP
#include <errno.h>
#include <json-c/json.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/args.h"
#include "parallel/comm.h"
#include "parallel/topology.h"
#include "runtime/engine.h"
#include "runtime/ep_cli.h"
#include "runtime/tokenizer.h"

// ---------------------------------------------------------------------------- options
typedef struct {
    const char *model_dir, *moe, *host, *served_name;
    int port, kv_slots, ctx, step_tokens, queue, threads, verbose;
    size_t max_body;
    double drain_s;
    float drop;
    uint64_t seed;
    bind_mode bind;
} serve_options;

static void usage(FILE *f) {
    fprintf(f,
        "usage: mpirun -np P llamoe-serve [options]\n"
        "  -m DIR              Hugging Face Llama or Mixtral directory (default: the bundled stories260k)\n"
        "  --moe MODE          dense | identity:E | upcycle:E:k | production:E:k (default on a dense\n"
        "                      checkpoint: upcycle:8:2; a Mixtral checkpoint uses its own experts)\n"
        "  --drop R            production mode: fraction of neurons re-initialised (default 0.5)\n"
        "  --seed S            router seed, and the sampling seed base of requests without one (default 1234)\n"
        "  --host ADDR         address to listen on (default 127.0.0.1)\n"
        "  --port N            port (default 8080; 0: any free port, printed at start)\n"
        "  --served-model-name NAME  the model's name in the API (default: the directory's name)\n"
        "  --kv-slots N        sequences per rank, each with a KV cache of --ctx positions (default 4)\n"
        "  --ctx N             positions per sequence, prompt plus generated (default: max_position_embeddings,\n"
        "                      at most 2048)\n"
        "  --step-tokens N     most tokens per rank in one step (prefill chunk, default 256)\n"
        "  --queue N           requests that may wait for a free slot; more get 429 (default 64)\n"
        "  --max-body BYTES    largest request body; larger gets 413 (default 1048576)\n"
        "  --drain SECONDS     on SIGTERM/SIGINT, how long running requests may finish before they\n"
        "                      are cut (default 5)\n"
        "  --threads N         CPU threads per rank (default: the cores bound to the rank)\n"
        "  --bind cores|none   bind ranks to cores with hwloc (default cores)\n"
        "  --verbose           one line per request on stderr\n"
        "  -h, --help          this text\n");
}

static int parse_args(int argc, char **argv, serve_options *o, llamoe_err *err) {
    *o = (serve_options){.model_dir = EP_DEFAULT_MODEL, .host = "127.0.0.1", .port = 8080, .kv_slots = 4,
                         .step_tokens = 256, .queue = 64, .max_body = 1 << 20, .drain_s = 5, .drop = 0.5f,
                         .seed = 1234, .bind = BIND_CORES};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return 1;
        if (!strcmp(a, "--verbose")) { o->verbose = 1; continue; }
        static const char *const takes_value[] = {"-m", "--moe", "--drop", "--seed", "--host", "--port",
            "--served-model-name", "--kv-slots", "--ctx", "--step-tokens", "--queue", "--max-body", "--drain",
            "--threads", "--bind", NULL};
        int known = 0;
        for (int j = 0; takes_value[j]; j++) known |= !strcmp(a, takes_value[j]);
        if (!known) return fail(err, "%s: unknown option (see --help)", a);
        if (i + 1 >= argc) return fail(err, "%s: missing value (see --help)", a);
        const char *v = argv[++i];
        int rc = 0, max_body = 0;
        if (!strcmp(a, "-m")) o->model_dir = v;
        else if (!strcmp(a, "--moe")) o->moe = v;
        else if (!strcmp(a, "--host")) o->host = v;
        else if (!strcmp(a, "--served-model-name")) {
            if (!*v) rc = fail(err, "--served-model-name: empty");
            o->served_name = v;
        } else if (!strcmp(a, "--drop")) rc = arg_float(a, v, 0.0f, 1.0f, &o->drop, err);
        else if (!strcmp(a, "--drain")) rc = arg_double(a, v, 0.0, 86400.0, &o->drain_s, err);
        else if (!strcmp(a, "--seed")) rc = arg_u64(a, v, 0, UINT64_MAX, &o->seed, err);
        else if (!strcmp(a, "--bind")) {
            if (bind_mode_parse(v, &o->bind) != 0) rc = fail(err, "--bind %s: expected cores or none", v);
        } else if (!strcmp(a, "--port")) rc = arg_int(a, v, 0, 65535, &o->port, err);
        else if (!strcmp(a, "--kv-slots")) rc = arg_int(a, v, 1, 4096, &o->kv_slots, err);
        else if (!strcmp(a, "--ctx")) rc = arg_int(a, v, 1, 1 << 24, &o->ctx, err);
        else if (!strcmp(a, "--step-tokens")) rc = arg_int(a, v, 1, 1 << 16, &o->step_tokens, err);
        else if (!strcmp(a, "--queue")) rc = arg_int(a, v, 0, 1 << 20, &o->queue, err);
        else if (!strcmp(a, "--threads")) rc = arg_int(a, v, 1, 4096, &o->threads, err);
        else if (!strcmp(a, "--max-body")) {
            rc = arg_int(a, v, 1024, 1 << 30, &max_body, err);
            o->max_body = (size_t)max_body;
        }
        if (rc != 0) return -1;
    }
    return 0;
}

// ---------------------------------------------------------------------------- requests
// A request is shared by its HTTP thread and the engine loop (refs = 2 once queued); the
// fields below `lock` change only under the server's mutex.
typedef enum { API_COMPLETIONS, API_CHAT } api_kind;
typedef enum { REQ_NEW, REQ_QUEUED, REQ_RUNNING, REQ_DONE } request_state;
enum { MAX_STOPS = 4 };

typedef struct request {
    // Set by the HTTP thread before the request is queued; read-only afterwards.
    api_kind kind;
    int64_t number;              // the id's number
    int32_t *prompt;
    int n_prompt;
    engine_request sampling;
    char *stop_str[MAX_STOPS];   // stop strings
    size_t stop_len[MAX_STOPS];
    int n_stop;
    int stream, include_usage, return_token_ids;
    double t_arrival;
    // lock: the server's mutex
    request_state state;
    int32_t *ids;                // generated tokens, capacity sampling.max_new
    int n_ids;
    stop_reason stop;            // the engine's reason, once DONE
    int cancel;                  // the HTTP side is done with it (client gone, stop string)
    int matched_stop;            // ... because a stop string ended the text
    int aborted;                 // the server cut it short (shutdown)
    int seq;                     // engine handle while RUNNING
    int refs;
    double t_first_token;
    pthread_cond_t changed;      // new tokens or a new state
    struct request *next;        // queue link
} request;

// ---------------------------------------------------------------------------- server state
enum { N_STEP_BUCKETS = 12 };
static const double step_bucket_s[N_STEP_BUCKETS] = {0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5};
static const int http_codes[] = {200, 400, 404, 405, 413, 429, 503};
enum { N_CODES = sizeof http_codes / sizeof http_codes[0] };

typedef struct {
    serve_options o;
    const tokenizer *tok;
    const model *m;
    const char *name;            // the served model name
    int ctx, slots_total;
    int32_t eot_id;              // <|eot_id|> or -1 (no Llama 3 chat template)
    int32_t header_start, header_end;
    time_t started;

    pthread_mutex_t lock;
    pthread_cond_t wake;         // the engine loop waits here while idle
    request *queue_head, *queue_tail;
    int n_queued, n_running;
    request **running;           // [slots_total] by engine handle
    int stopping;                // SIGTERM/SIGINT: no new requests
    struct MHD_Daemon *http;
    double cut_at;               // running requests are cut at this time once stopping
    int64_t next_number;
    int n_responding;            // queued requests whose response is not finished yet
    // metrics
    int64_t responses[N_CODES], finished_stop, finished_length, cancelled, aborted;
    int64_t prompt_tokens, generation_tokens;
    int64_t step_count[N_STEP_BUCKETS + 1];
    double step_sum_s, ttft_sum_s;
    int64_t ttft_count;
    engine_stats engine;
    int64_t *tokens_per_expert;  // [layers * experts] or NULL
    int n_layers, n_experts;
} server;

static void server_lock(server *s) { CHECK(pthread_mutex_lock(&s->lock) == 0); }
static void server_unlock(server *s) { CHECK(pthread_mutex_unlock(&s->lock) == 0); }

static void count_response(server *s, int code) {
    server_lock(s);
    for (int i = 0; i < N_CODES; i++)
        if (http_codes[i] == code) s->responses[i]++;
    server_unlock(s);
}

static request *request_new(void) {
    request *r = xcalloc(1, sizeof *r);
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    CHECK(pthread_cond_init(&r->changed, &a) == 0);
    pthread_condattr_destroy(&a);
    r->refs = 1;
    r->seq = -1;
    return r;
}

// Under the lock when the request was ever queued.
static void request_release(request *r) {
    if (--r->refs > 0) return;
    free(r->prompt);
    free(r->ids);
    for (int i = 0; i < r->n_stop; i++) free(r->stop_str[i]);
    pthread_cond_destroy(&r->changed);
    free(r);
}

// ---------------------------------------------------------------------------- errors
// An error as OpenAI sends it: {"error": {"message", "type", "param", "code"}}.
typedef struct {
    int status;
    const char *type;
    char param[64];
    char msg[600];
} api_error;

static int api_fail(api_error *e, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int api_fail(api_error *e, int status, const char *param, const char *fmt, ...) {
    e->status = status;
    e->type = status == 404 ? "not_found_error" : status == 429 ? "rate_limit_error"
            : status >= 500 ? "server_error" : "invalid_request_error";
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return -1;
}

static char *error_json(const api_error *e) {
    json_object *root = json_object_new_object(), *err = json_object_new_object();
    json_object_object_add(err, "message", json_object_new_string(e->msg));
    json_object_object_add(err, "type", json_object_new_string(e->type));
    json_object_object_add(err, "param", e->param[0] ? json_object_new_string(e->param) : NULL);
    json_object_object_add(err, "code", json_object_new_int(e->status));
    json_object_object_add(root, "error", err);
    char *s = xstrdup(json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(root);
    return s;
}

// ---------------------------------------------------------------------------- request bodies
static json_object *field(json_object *body, const char *key) {
    json_object *v = NULL;
    json_object_object_get_ex(body, key, &v);
    return v;   // NULL when absent or JSON null
}

static int get_number(json_object *body, const char *key, double lo, double hi, double *out, api_error *e) {
    json_object *v = field(body, key);
    if (!v) return 0;
    if (!json_object_is_type(v, json_type_double) && !json_object_is_type(v, json_type_int))
        return api_fail(e, 400, key, "%s: expected a number", key);
    double d = json_object_get_double(v);
    if (!(d >= lo && d <= hi)) return api_fail(e, 400, key, "%s: %g is outside [%g, %g]", key, d, lo, hi);
    *out = d;
    return 0;
}

static int get_int(json_object *body, const char *key, int64_t lo, int64_t hi, int64_t *out, api_error *e) {
    json_object *v = field(body, key);
    if (!v) return 0;
    if (!json_object_is_type(v, json_type_int)) return api_fail(e, 400, key, "%s: expected an integer", key);
    int64_t i = json_object_get_int64(v);
    if (i < lo || i > hi) return api_fail(e, 400, key, "%s: %lld is outside [%lld, %lld]", key, (long long)i, (long long)lo, (long long)hi);
    *out = i;
    return 0;
}

static int get_bool(json_object *body, const char *key, int *out, api_error *e) {
    json_object *v = field(body, key);
    if (!v) return 0;
    if (!json_object_is_type(v, json_type_boolean)) return api_fail(e, 400, key, "%s: expected true or false", key);
    *out = json_object_get_boolean(v);
    return 0;
}

// "prompt": a string, an array of token ids, or an array holding one of those.
static int completion_prompt(server *s, json_object *body, request *r, api_error *e) {
    json_object *p = field(body, "prompt");
    if (!p) return api_fail(e, 400, "prompt", "prompt: missing");
    if (json_object_is_type(p, json_type_array) && json_object_array_length(p) == 1 &&
        !json_object_is_type(json_object_array_get_idx(p, 0), json_type_int))
        p = json_object_array_get_idx(p, 0);   // a batch of one prompt
    if (json_object_is_type(p, json_type_string)) {
        if (!s->tok) return api_fail(e, 400, "prompt", "prompt: the model has no tokenizer.json; send token ids");
        llamoe_err err;
        if (tokenizer_encode(s->tok, json_object_get_string(p), (size_t)json_object_get_string_len(p), 1, 1,
                             &r->prompt, &r->n_prompt, &err) != 0)
            return api_fail(e, 400, "prompt", "prompt: %s", err.msg);
        return 0;
    }
    if (!json_object_is_type(p, json_type_array))
        return api_fail(e, 400, "prompt", "prompt: expected a string or an array of token ids");
    size_t n = json_object_array_length(p);
    if (n == 0) return api_fail(e, 400, "prompt", "prompt: empty");
    if (n > (size_t)s->ctx) return api_fail(e, 400, "prompt", "prompt: %zu tokens is longer than the context of %d", n, s->ctx);
    r->prompt = xmalloc(n * sizeof(int32_t));
    r->n_prompt = (int)n;
    for (size_t i = 0; i < n; i++) {
        json_object *t = json_object_array_get_idx(p, i);
        if (!json_object_is_type(t, json_type_int))
            return api_fail(e, 400, "prompt", "prompt: element %zu is not a token id (one prompt per request: n = 1)", i);
        int64_t id = json_object_get_int64(t);
        if (id < 0 || id >= s->m->cfg.vocab_size)
            return api_fail(e, 400, "prompt", "prompt: token id %lld at position %zu is out of range (vocab_size %d)",
                            (long long)id, i, s->m->cfg.vocab_size);
        r->prompt[i] = (int32_t)id;
    }
    return 0;
}

// A message's "content": a string, or an array of {"type": "text", "text": ...} parts.
static int message_text(json_object *content, size_t i, char **text, size_t *len, api_error *e) {
    if (json_object_is_type(content, json_type_string)) {
        *len = (size_t)json_object_get_string_len(content);
        *text = xmalloc(*len + 1);
        memcpy(*text, json_object_get_string(content), *len + 1);
        return 0;
    }
    if (!json_object_is_type(content, json_type_array))
        return api_fail(e, 400, "messages", "messages[%zu].content: expected a string or an array of text parts", i);
    size_t n = 0, cap = 64;
    char *t = xmalloc(cap);
    for (size_t k = 0; k < json_object_array_length(content); k++) {
        json_object *part = json_object_array_get_idx(content, k), *type = field(part, "type"), *pt = field(part, "text");
        if (!json_object_is_type(part, json_type_object) || !type || strcmp(json_object_get_string(type), "text") ||
            !pt || !json_object_is_type(pt, json_type_string)) {
            free(t);
            return api_fail(e, 400, "messages", "messages[%zu].content[%zu]: expected {\"type\": \"text\", \"text\": \"...\"}", i, k);
        }
        size_t pl = (size_t)json_object_get_string_len(pt);
        while (n + pl + 1 > cap) cap *= 2;
        t = xrealloc(t, cap);
        memcpy(t + n, json_object_get_string(pt), pl);
        n += pl;
    }
    t[n] = 0;
    *text = t;
    *len = n;
    return 0;
}

static int is_blank(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

// The Llama 3 chat template: each message as <|start_header_id|>ROLE<|end_header_id|>\n\n
// CONTENT (trimmed)<|eot_id|>, then the assistant's header; BOS from the tokenizer.
static int chat_prompt(server *s, json_object *body, request *r, api_error *e) {
    json_object *msgs = field(body, "messages");
    if (!msgs) return api_fail(e, 400, "messages", "messages: missing");
    if (!json_object_is_type(msgs, json_type_array) || json_object_array_length(msgs) == 0)
        return api_fail(e, 400, "messages", "messages: expected a non-empty array");
    if (!s->tok || s->header_start < 0 || s->header_end < 0 || s->eot_id < 0)
        return api_fail(e, 400, "messages", "chat: the model's tokenizer has no Llama 3 chat tokens (<|start_header_id|>, <|end_header_id|>, <|eot_id|>); use /v1/completions");
    size_t len = 0, cap = 256;
    char *t = xmalloc(cap);
    for (size_t i = 0; i <= json_object_array_length(msgs); i++) {
        const char *role = "assistant";
        char *content = NULL;
        size_t cl = 0;
        if (i < json_object_array_length(msgs)) {
            json_object *m = json_object_array_get_idx(msgs, i), *ro = field(m, "role"), *co = field(m, "content");
            if (!json_object_is_type(m, json_type_object) || !ro || !json_object_is_type(ro, json_type_string)) {
                free(t);
                return api_fail(e, 400, "messages", "messages[%zu]: expected an object with a string \"role\"", i);
            }
            role = json_object_get_string(ro);
            if (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant")) {
                free(t);
                return api_fail(e, 400, "messages", "messages[%zu].role: \"%.40s\" is not system, user or assistant", i, role);
            }
            if (!co) { free(t); return api_fail(e, 400, "messages", "messages[%zu].content: missing", i); }
            if (message_text(co, i, &content, &cl, e) != 0) { free(t); return -1; }
        }
        // trim, as the template does
        size_t a = 0, b = cl;
        while (a < b && is_blank(content[a])) a++;
        while (b > a && is_blank(content[b - 1])) b--;
        size_t need = len + strlen(role) + (b - a) + 64;
        while (need > cap) cap *= 2;
        t = xrealloc(t, cap);
        len += (size_t)sprintf(t + len, "<|start_header_id|>%s<|end_header_id|>\n\n", role);
        if (content) {
            memcpy(t + len, content + a, b - a);
            len += b - a;
            len += (size_t)sprintf(t + len, "<|eot_id|>");
        }
        free(content);
    }
    llamoe_err err;
    int rc = tokenizer_encode(s->tok, t, len, 1, 1, &r->prompt, &r->n_prompt, &err);
    free(t);
    if (rc != 0) return api_fail(e, 400, "messages", "messages: %s", err.msg);
    r->sampling.end_token = s->eot_id;
    return 0;
}

static int parse_stop(json_object *body, request *r, api_error *e) {
    json_object *v = field(body, "stop");
    if (!v) return 0;
    int array = json_object_is_type(v, json_type_array);
    size_t n = array ? json_object_array_length(v) : 1;
    if (n > MAX_STOPS) return api_fail(e, 400, "stop", "stop: at most %d strings", MAX_STOPS);
    for (size_t i = 0; i < n; i++) {
        json_object *s = array ? json_object_array_get_idx(v, i) : v;
        if (!json_object_is_type(s, json_type_string) || json_object_get_string_len(s) == 0)
            return api_fail(e, 400, "stop", "stop: expected a non-empty string or an array of up to %d of them", MAX_STOPS);
        size_t len = (size_t)json_object_get_string_len(s);
        r->stop_str[r->n_stop] = xmalloc(len + 1);
        memcpy(r->stop_str[r->n_stop], json_object_get_string(s), len + 1);
        r->stop_len[r->n_stop++] = len;
    }
    return 0;
}

// Fills r from a completions or chat body; api_error says what is wrong with it.
static int parse_request(server *s, const char *text, size_t len, api_kind kind, request *r, api_error *e) {
    json_tokener *jt = json_tokener_new_ex(32);
    json_tokener_set_flags(jt, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    json_object *body = len > 0 ? json_tokener_parse_ex(jt, text, (int)len) : NULL;
    enum json_tokener_error je = len > 0 ? json_tokener_get_error(jt) : json_tokener_continue;
    size_t used = len > 0 ? json_tokener_get_parse_end(jt) : 0;
    json_tokener_free(jt);
    if (!body || je != json_tokener_success || used != len) {
        json_object_put(body);
        return api_fail(e, 400, NULL, "request body: not valid JSON (%s at byte %zu)",
                        je == json_tokener_success ? "text after the JSON value" :
                        je == json_tokener_continue ? "unexpected end" : json_tokener_error_desc(je), used);
    }
    int rc = -1;
    if (!json_object_is_type(body, json_type_object)) { api_fail(e, 400, NULL, "request body: expected a JSON object"); goto out; }

    json_object *model_name = field(body, "model");
    if (model_name && (!json_object_is_type(model_name, json_type_string) || strcmp(json_object_get_string(model_name), s->name))) {
        if (!json_object_is_type(model_name, json_type_string)) api_fail(e, 400, "model", "model: expected a string");
        else api_fail(e, 404, "model", "model: \"%.100s\" does not exist (this server has \"%s\")", json_object_get_string(model_name), s->name);
        goto out;
    }
    // Options this server does not implement are refused, not ignored.
    int64_t n = 1, best_of = 1;
    int echo = 0;
    double penalty = 0;
    if (get_int(body, "n", 1, 1, &n, e) || get_int(body, "best_of", 1, 1, &best_of, e) || get_bool(body, "echo", &echo, e))
        goto out;
    if (echo) { api_fail(e, 400, "echo", "echo: not supported"); goto out; }
    if (field(body, "logprobs") && !(json_object_is_type(field(body, "logprobs"), json_type_boolean) && !json_object_get_boolean(field(body, "logprobs")))) {
        api_fail(e, 400, "logprobs", "logprobs: not supported");
        goto out;
    }
    static const char *const penalties[] = {"presence_penalty", "frequency_penalty"};
    for (int i = 0; i < 2; i++) {
        if (get_number(body, penalties[i], -2, 2, &penalty, e)) goto out;
        if (penalty != 0) { api_fail(e, 400, penalties[i], "%s: not supported (only 0)", penalties[i]); goto out; }
    }

    r->kind = kind;
    r->sampling.end_token = -1;
    if ((kind == API_CHAT ? chat_prompt(s, body, r, e) : completion_prompt(s, body, r, e)) != 0) goto out;
    llamoe_err err;
    if (sequence_check(s->m, s->ctx, r->prompt, r->n_prompt, &err) != 0) {
        api_fail(e, 400, kind == API_CHAT ? "messages" : "prompt", "%s", err.msg);
        goto out;
    }
    // max_tokens: OpenAI's default is 16 for completions and the rest of the context for chat.
    int64_t room = s->ctx - r->n_prompt + 1, max_tokens = kind == API_CHAT ? room : 16;
    const char *max_key = kind == API_CHAT && field(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
    if (get_int(body, max_key, 1, INT32_MAX, &max_tokens, e)) goto out;
    r->sampling.max_new = (int)(max_tokens < room ? max_tokens : room);   // the context ends it anyway
    double temperature = 1.0, top_p = 1.0;
    if (get_number(body, "temperature", 0, 2, &temperature, e) || get_number(body, "top_p", 0, 1, &top_p, e)) goto out;
    if (top_p <= 0) { api_fail(e, 400, "top_p", "top_p: must be above 0"); goto out; }
    r->sampling.temperature = (float)temperature;
    r->sampling.top_p = (float)top_p;
    json_object *seed = field(body, "seed");
    if (seed) {
        if (!json_object_is_type(seed, json_type_int) || json_object_get_int64(seed) < 0) {
            api_fail(e, 400, "seed", "seed: expected an integer in [0, %llu]", (unsigned long long)UINT64_MAX);
            goto out;
        }
        r->sampling.seed = json_object_get_uint64(seed);
    } else {
        r->sampling.seed = rng_derive(s->o.seed, 0x72657175657374ull, (uint64_t)r->number);   // "request"
    }
    if (get_bool(body, "ignore_eos", &r->sampling.ignore_eos, e) || parse_stop(body, r, e) ||
        get_bool(body, "stream", &r->stream, e) || get_bool(body, "return_token_ids", &r->return_token_ids, e))
        goto out;
    json_object *so = field(body, "stream_options");
    if (so) {
        if (!json_object_is_type(so, json_type_object)) { api_fail(e, 400, "stream_options", "stream_options: expected an object"); goto out; }
        if (get_bool(so, "include_usage", &r->include_usage, e)) goto out;
    }
    rc = 0;
out:
    json_object_put(body);
    return rc;
}

// ---------------------------------------------------------------------------- text out
// Generated tokens become text through the tokenizer's streaming decoder (never half a UTF-8
// character). Stop strings: text that could still be the start of one is held back; a match
// cuts the text before it and ends the response.
typedef struct {
    tokenizer_stream *stream;
    char *text;
    size_t len, cap, sent;
    int matched;                 // a stop string was found: text ends before it
} text_out;

static void text_append(text_out *t, const char *p, size_t n) {
    if (t->len + n + 1 > t->cap) {
        while (t->len + n + 1 > t->cap) t->cap = t->cap ? 2 * t->cap : 256;
        t->text = xrealloc(t->text, t->cap);
    }
    memcpy(t->text + t->len, p, n);
    t->len += n;
    t->text[t->len] = 0;
}

static void text_init(text_out *t, const tokenizer *tok, const int32_t *prompt, int n_prompt) {
    memset(t, 0, sizeof *t);
    text_append(t, "", 0);
    if (!tok) return;
    t->stream = tokenizer_stream_new(tok);
    // The prompt goes through the stream first, unprinted, so that decoders which treat the
    // start of the text specially (SentencePiece's leading space) see the completion in place.
    size_t n;
    for (int i = 0; i < n_prompt; i++)
        if (!tokenizer_is_special(tok, prompt[i])) tokenizer_stream_push(t->stream, prompt[i], &n);
}

static void text_free(text_out *t) {
    tokenizer_stream_free(t->stream);
    free(t->text);
}

// Adds one generated token (last: no more will come) and returns how many bytes from t->sent
// may be sent now.
static size_t text_push(text_out *t, const server *s, const request *r, int32_t id, int last) {
    if (t->matched) return 0;
    size_t n = 0;
    if (t->stream && id >= 0 && !tokenizer_is_special(s->tok, id)) {
        const char *p = tokenizer_stream_push(t->stream, id, &n);
        if (p) text_append(t, p, n);
    }
    if (t->stream && last) {
        const char *p = tokenizer_stream_flush(t->stream, &n);
        text_append(t, p, n);
    }
    // A match cannot start in text already sent (it would have been held back), so the search
    // starts at t->sent.
    size_t cut = t->len;
    for (int i = 0; i < r->n_stop; i++) {
        const char *hit = memmem(t->text + t->sent, t->len - t->sent, r->stop_str[i], r->stop_len[i]);
        if (hit && (size_t)(hit - t->text) < cut) cut = (size_t)(hit - t->text);
    }
    if (cut < t->len) {
        t->len = cut;
        t->text[cut] = 0;
        t->matched = 1;
        return cut - t->sent;
    }
    size_t hold = 0;
    for (int i = 0; i < r->n_stop && !last; i++)
        for (size_t k = r->stop_len[i] - 1; k > hold; k--)
            if (k <= t->len - t->sent && !memcmp(t->text + t->len - k, r->stop_str[i], k)) { hold = k; break; }
    return t->len - hold - t->sent;
}

// ---------------------------------------------------------------------------- responses
static const char *finish_name(const request *r, const text_out *t) {
    if (t->matched) return "stop";
    if (r->aborted) return "abort";
    return r->stop == STOP_EOS ? "stop" : "length";
}

static json_object *ids_json(const int32_t *ids, int n) {
    json_object *a = json_object_new_array_ext(n);
    for (int i = 0; i < n; i++) json_object_array_add(a, json_object_new_int(ids[i]));
    return a;
}

static json_object *usage_json(const request *r, int n_out) {
    json_object *u = json_object_new_object();
    json_object_object_add(u, "prompt_tokens", json_object_new_int(r->n_prompt));
    json_object_object_add(u, "completion_tokens", json_object_new_int(n_out));
    json_object_object_add(u, "total_tokens", json_object_new_int(r->n_prompt + n_out));
    return u;
}

// The response object, or one streamed chunk of it: text[0..len) is the whole text or the
// chunk's delta, ids the tokens it covers; finish NULL while more chunks follow.
static char *response_json(const server *s, const request *r, int chunk, const char *text, size_t len,
                           const int32_t *ids, int n_ids, const char *finish, int n_out, int with_usage, int first) {
    int chat = r->kind == API_CHAT;
    json_object *root = json_object_new_object(), *choices = json_object_new_array(), *c = json_object_new_object();
    char id[64];
    snprintf(id, sizeof id, "%s-%lld", chat ? "chatcmpl" : "cmpl", (long long)r->number);
    json_object_object_add(root, "id", json_object_new_string(id));
    json_object_object_add(root, "object", json_object_new_string(chat ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion"));
    json_object_object_add(root, "created", json_object_new_int64((int64_t)time(NULL)));
    json_object_object_add(root, "model", json_object_new_string(s->name));
    if (text) {   // text NULL: the usage chunk at the end of a stream has no choices
        json_object_object_add(c, "index", json_object_new_int(0));
        if (chat) {
            json_object *msg = json_object_new_object();
            if (!chunk || first) json_object_object_add(msg, "role", json_object_new_string("assistant"));
            json_object_object_add(msg, "content", json_object_new_string_len(text, (int)len));
            json_object_object_add(c, chunk ? "delta" : "message", msg);
        } else {
            json_object_object_add(c, "text", json_object_new_string_len(text, (int)len));
        }
        json_object_object_add(c, "logprobs", NULL);
        json_object_object_add(c, "finish_reason", finish ? json_object_new_string(finish) : NULL);
        if (r->return_token_ids) {
            json_object_object_add(c, "token_ids", ids_json(ids, n_ids));
            if (!chunk || first) json_object_object_add(c, "prompt_token_ids", ids_json(r->prompt, r->n_prompt));
        }
        json_object_array_add(choices, c);
    } else {
        json_object_put(c);
    }
    json_object_object_add(root, "choices", choices);
    if (with_usage) json_object_object_add(root, "usage", usage_json(r, n_out));
    char *out = xstrdup(json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(root);
    return out;
}

// ---------------------------------------------------------------------------- HTTP
// One connection's request: its body as it arrives, then the request and its output.
typedef struct {
    server *srv;
    struct MHD_Connection *conn;
    size_t body_len, discarded;
    char *body;
    int too_big;
    request *req;                // one ref while set
    int queued;                  // counted in n_responding
    text_out text;
    int n_taken;                 // tokens of req already turned into text
    // streaming
    char *out;
    size_t out_len, out_cap, out_sent;
    int first_chunk, stream_done;
} http_ctx;

static enum MHD_Result send_text(struct MHD_Connection *conn, server *srv, int status, const char *type, const char *body,
                                 const char *allow) {
    struct MHD_Response *resp = MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
    MHD_add_response_header(resp, "Content-Type", type);
    if (allow) MHD_add_response_header(resp, "Allow", allow);
    if (status == 429 || status == 503) MHD_add_response_header(resp, "Retry-After", "1");
    enum MHD_Result ret = MHD_queue_response(conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    count_response(srv, status);
    return ret;
}

static enum MHD_Result send_error(struct MHD_Connection *conn, server *srv, const api_error *e, const char *allow) {
    char *body = error_json(e);
    enum MHD_Result ret = send_text(conn, srv, e->status, "application/json", body, allow);
    free(body);
    return ret;
}

static enum MHD_Result send_json(struct MHD_Connection *conn, server *srv, json_object *o) {
    enum MHD_Result ret = send_text(conn, srv, 200, "application/json",
                                    json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE), NULL);
    json_object_put(o);
    return ret;
}

// Whether the client has closed its end (checked while waiting for tokens).
static int client_gone(struct MHD_Connection *conn) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return 1;
    struct pollfd p = {.fd = ci->connect_fd, .events = POLLRDHUP};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

// Waits for the request's next token. Returns 1 with *id (and *last when it is the final one),
// 0 when the request ended without another token (cut by a shutdown), -1 when the client left.
static int next_token(http_ctx *h, int32_t *id, int *last) {
    server *s = h->srv;
    request *r = h->req;
    server_lock(s);
    while (h->n_taken == r->n_ids && r->state != REQ_DONE) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_nsec += 100 * 1000000;   // look at the socket every 100 ms
        if (until.tv_nsec >= 1000000000) { until.tv_sec++; until.tv_nsec -= 1000000000; }
        pthread_cond_timedwait(&r->changed, &s->lock, &until);
        if (h->n_taken == r->n_ids && r->state != REQ_DONE) {
            server_unlock(s);
            int gone = client_gone(h->conn);
            server_lock(s);
            if (gone) {
                r->cancel = 1;
                pthread_cond_signal(&s->wake);
                server_unlock(s);
                return -1;
            }
        }
    }
    int got = h->n_taken < r->n_ids;
    if (got) {
        *id = r->ids[h->n_taken++];
        *last = r->state == REQ_DONE && h->n_taken == r->n_ids;
    }
    server_unlock(s);
    return got;
}

// The HTTP side is done with its request: a running one leaves the engine at the next step.
static void finish_request(http_ctx *h) {
    server *s = h->srv;
    if (!h->req) return;
    server_lock(s);
    if (h->req->state != REQ_DONE && !h->req->cancel) {
        h->req->cancel = 1;
        h->req->matched_stop = h->text.matched;
        pthread_cond_signal(&s->wake);
    }
    request_release(h->req);
    server_unlock(s);
    h->req = NULL;
}

static void out_printf(http_ctx *h, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void out_printf(http_ctx *h, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (h->out_len + (size_t)n + 1 > h->out_cap) {
        while (h->out_len + (size_t)n + 1 > h->out_cap) h->out_cap = h->out_cap ? 2 * h->out_cap : 1024;
        h->out = xrealloc(h->out, h->out_cap);
    }
    va_start(ap, fmt);
    vsnprintf(h->out + h->out_len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    h->out_len += (size_t)n;
}

// Server-sent events: one chunk per token (its text may be empty while a character or a
// possible stop string is incomplete), the last with finish_reason, then usage if asked for
// and [DONE].
static int stream_more(http_ctx *h) {
    server *s = h->srv;
    request *r = h->req;
    int32_t id = 0;
    int last = 0;
    int got = next_token(h, &id, &last);
    if (got < 0) return -1;
    const char *finish = NULL;
    char *chunk;
    size_t from = h->text.sent;
    if (got) {
        size_t n = text_push(&h->text, s, r, id, last);
        h->text.sent += n;
        if (last || h->text.matched) finish = finish_name(r, &h->text);
        chunk = response_json(s, r, 1, h->text.text + from, n, &id, 1, finish, h->n_taken, 0, h->first_chunk);
    } else {   // cut by a shutdown: whatever text is held back, then the end
        size_t n = text_push(&h->text, s, r, -1, 1);
        h->text.sent += n;
        finish = finish_name(r, &h->text);
        chunk = response_json(s, r, 1, h->text.text + from, n, NULL, 0, finish, h->n_taken, 0, h->first_chunk);
    }
    h->first_chunk = 0;
    out_printf(h, "data: %s\n\n", chunk);
    free(chunk);
    if (finish) {
        if (r->include_usage) {
            chunk = response_json(s, r, 1, NULL, 0, NULL, 0, NULL, h->n_taken, 1, 0);
            out_printf(h, "data: %s\n\n", chunk);
            free(chunk);
        }
        out_printf(h, "data: [DONE]\n\n");
        h->stream_done = 1;
        finish_request(h);
    }
    return 0;
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    http_ctx *h = cls;
    while (h->out_sent == h->out_len) {
        if (h->stream_done) return MHD_CONTENT_READER_END_OF_STREAM;
        h->out_len = h->out_sent = 0;
        if (stream_more(h) != 0) return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    size_t n = h->out_len - h->out_sent < max ? h->out_len - h->out_sent : max;
    memcpy(buf, h->out + h->out_sent, n);
    h->out_sent += n;
    return (ssize_t)n;
}

// Waits for the whole generation and answers with one JSON object.
static enum MHD_Result answer_whole(http_ctx *h) {
    server *s = h->srv;
    request *r = h->req;
    for (;;) {
        int32_t id;
        int last = 0;
        int got = next_token(h, &id, &last);
        if (got < 0) return MHD_NO;   // the client left: close
        if (got == 0) break;
        h->text.sent += text_push(&h->text, s, r, id, last);
        if (last || h->text.matched) break;
    }
    if (!h->text.matched && r->aborted) {
        api_error e;
        api_fail(&e, 503, NULL, "the server is shutting down; the request was cut after %d tokens", h->n_taken);
        finish_request(h);
        return send_error(h->conn, s, &e, NULL);
    }
    char *body = response_json(s, r, 0, h->text.text, h->text.len, r->ids, h->n_taken, finish_name(r, &h->text),
                               h->n_taken, 1, 1);
    finish_request(h);
    enum MHD_Result ret = send_text(h->conn, s, 200, "application/json", body, NULL);
    free(body);
    return ret;
}

// Queues the request (or says why not) and answers: a stream at once, a whole response once
// generated.
static enum MHD_Result handle_generate(http_ctx *h, api_kind kind) {
    server *s = h->srv;
    request *r = request_new();
    api_error e;
    server_lock(s);
    r->number = s->next_number++;
    server_unlock(s);
    r->t_arrival = now_seconds();
    if (parse_request(s, h->body, h->body_len, kind, r, &e) != 0) {
        request_release(r);
        return send_error(h->conn, s, &e, NULL);
    }
    r->ids = xmalloc((size_t)r->sampling.max_new * sizeof(int32_t));
    server_lock(s);
    int full = s->n_queued + s->n_running >= s->o.queue + s->slots_total;
    if (s->stopping || full) {
        if (s->stopping) api_fail(&e, 503, NULL, "the server is shutting down");
        else api_fail(&e, 429, NULL, "the server is busy: %d requests running and %d waiting (--queue %d); retry later",
                      s->n_running, s->n_queued, s->o.queue);
        server_unlock(s);
        request_release(r);
        return send_error(h->conn, s, &e, NULL);
    }
    r->refs = 2;   // this thread and the engine loop
    r->state = REQ_QUEUED;
    s->n_responding++;
    if (s->queue_tail) s->queue_tail->next = r;
    else s->queue_head = r;
    s->queue_tail = r;
    s->n_queued++;
    s->prompt_tokens += r->n_prompt;
    pthread_cond_signal(&s->wake);
    server_unlock(s);
    h->req = r;
    h->queued = 1;
    text_init(&h->text, s->tok, r->prompt, r->n_prompt);
    if (s->o.verbose)
        fprintf(stderr, "llamoe-serve: request %lld: %s, %d prompt tokens, max_tokens %d, temperature %g, top_p %g%s\n",
                (long long)r->number, kind == API_CHAT ? "chat" : "completion", r->n_prompt, r->sampling.max_new,
                r->sampling.temperature, r->sampling.top_p, r->stream ? ", stream" : "");
    if (!r->stream) return answer_whole(h);

    h->first_chunk = 1;
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_reader, h, NULL);
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    enum MHD_Result ret = MHD_queue_response(h->conn, 200, resp);
    MHD_destroy_response(resp);
    count_response(s, 200);
    return ret;
}

static enum MHD_Result handle_models(http_ctx *h) {
    server *s = h->srv;
    json_object *root = json_object_new_object(), *data = json_object_new_array(), *m = json_object_new_object();
    json_object_object_add(m, "id", json_object_new_string(s->name));
    json_object_object_add(m, "object", json_object_new_string("model"));
    json_object_object_add(m, "created", json_object_new_int64((int64_t)s->started));
    json_object_object_add(m, "owned_by", json_object_new_string("llamoe"));
    json_object_object_add(m, "max_model_len", json_object_new_int(s->ctx));
    json_object_array_add(data, m);
    json_object_object_add(root, "object", json_object_new_string("list"));
    json_object_object_add(root, "data", data);
    return send_json(h->conn, s, root);
}

static enum MHD_Result handle_health(http_ctx *h) {
    server *s = h->srv;
    server_lock(s);
    int stopping = s->stopping;
    server_unlock(s);
    if (stopping) {
        api_error e;
        api_fail(&e, 503, NULL, "the server is shutting down");
        return send_error(h->conn, s, &e, NULL);
    }
    json_object *root = json_object_new_object();
    json_object_object_add(root, "status", json_object_new_string("ok"));
    return send_json(h->conn, s, root);
}

// Prometheus text format.
static enum MHD_Result handle_metrics(http_ctx *h) {
    server *s = h->srv;
    text_out t = {0};
    char line[512];
#define PUT(...) do { int n_ = snprintf(line, sizeof line, __VA_ARGS__); text_append(&t, line, (size_t)n_); } while (0)
    server_lock(s);
    PUT("# HELP llamoe_requests_total HTTP responses by status code.\n# TYPE llamoe_requests_total counter\n");
    for (int i = 0; i < N_CODES; i++) PUT("llamoe_requests_total{code=\"%d\"} %lld\n", http_codes[i], (long long)s->responses[i]);
    PUT("# HELP llamoe_requests_finished_total Generations by how they ended.\n# TYPE llamoe_requests_finished_total counter\n");
    PUT("llamoe_requests_finished_total{reason=\"stop\"} %lld\n", (long long)s->finished_stop);
    PUT("llamoe_requests_finished_total{reason=\"length\"} %lld\n", (long long)s->finished_length);
    PUT("llamoe_requests_finished_total{reason=\"cancelled\"} %lld\n", (long long)s->cancelled);
    PUT("llamoe_requests_finished_total{reason=\"abort\"} %lld\n", (long long)s->aborted);
    PUT("# HELP llamoe_prompt_tokens_total Prompt tokens of accepted requests.\n# TYPE llamoe_prompt_tokens_total counter\n");
    PUT("llamoe_prompt_tokens_total %lld\n", (long long)s->prompt_tokens);
    PUT("# HELP llamoe_generation_tokens_total Tokens generated for requests.\n# TYPE llamoe_generation_tokens_total counter\n");
    PUT("llamoe_generation_tokens_total %lld\n", (long long)s->generation_tokens);
    PUT("# HELP llamoe_queue_depth Requests waiting for a KV slot.\n# TYPE llamoe_queue_depth gauge\nllamoe_queue_depth %d\n", s->n_queued);
    PUT("# HELP llamoe_running_sequences Requests holding a KV slot.\n# TYPE llamoe_running_sequences gauge\nllamoe_running_sequences %d\n", s->n_running);
    PUT("# HELP llamoe_kv_slots KV slots over all ranks.\n# TYPE llamoe_kv_slots gauge\nllamoe_kv_slots %d\n", s->slots_total);
    PUT("# HELP llamoe_step_seconds Wall time of engine steps (all ranks, plan to gathered tokens).\n# TYPE llamoe_step_seconds histogram\n");
    int64_t cum = 0;
    for (int i = 0; i < N_STEP_BUCKETS; i++) {
        cum += s->step_count[i];
        PUT("llamoe_step_seconds_bucket{le=\"%g\"} %lld\n", step_bucket_s[i], (long long)cum);
    }
    cum += s->step_count[N_STEP_BUCKETS];
    PUT("llamoe_step_seconds_bucket{le=\"+Inf\"} %lld\nllamoe_step_seconds_sum %.6f\nllamoe_step_seconds_count %lld\n",
        (long long)cum, s->step_sum_s, (long long)cum);
    PUT("# HELP llamoe_step_tokens_total Tokens run through the model, by kind.\n# TYPE llamoe_step_tokens_total counter\n");
    PUT("llamoe_step_tokens_total{kind=\"prefill\"} %lld\nllamoe_step_tokens_total{kind=\"decode\"} %lld\n",
        (long long)s->engine.prefill_tokens, (long long)s->engine.decode_tokens);
    PUT("# HELP llamoe_time_to_first_token_seconds From arrival to the first generated token.\n# TYPE llamoe_time_to_first_token_seconds summary\n");
    PUT("llamoe_time_to_first_token_seconds_sum %.6f\nllamoe_time_to_first_token_seconds_count %lld\n", s->ttft_sum_s, (long long)s->ttft_count);
    if (s->tokens_per_expert) {
        PUT("# HELP llamoe_expert_tokens_total Tokens routed to each expert.\n# TYPE llamoe_expert_tokens_total counter\n");
        double mean_imb = 0, worst = 0;
        for (int l = 0; l < s->n_layers; l++) {
            const int64_t *c = s->tokens_per_expert + (size_t)l * s->n_experts;
            int64_t sum = 0, max = 0;
            for (int e = 0; e < s->n_experts; e++) {
                PUT("llamoe_expert_tokens_total{layer=\"%d\",expert=\"%d\"} %lld\n", l, e, (long long)c[e]);
                sum += c[e];
                max = c[e] > max ? c[e] : max;
            }
            double imb = sum ? (double)max * s->n_experts / (double)sum : 0;
            mean_imb += imb / s->n_layers;
            worst = imb > worst ? imb : worst;
        }
        PUT("# HELP llamoe_expert_load_imbalance Tokens of the busiest expert over the mean (1 = balanced), mean over layers.\n"
            "# TYPE llamoe_expert_load_imbalance gauge\nllamoe_expert_load_imbalance %.4f\n", mean_imb);
        PUT("# HELP llamoe_expert_load_imbalance_worst The same for the most imbalanced layer.\n"
            "# TYPE llamoe_expert_load_imbalance_worst gauge\nllamoe_expert_load_imbalance_worst %.4f\n", worst);
    }
    server_unlock(s);
#undef PUT
    enum MHD_Result ret = send_text(h->conn, s, 200, "text/plain; version=0.0.4", t.text, NULL);
    free(t.text);
    return ret;
}

typedef struct {
    const char *path, *method;
    enum MHD_Result (*get)(http_ctx *);   // GET routes
    api_kind kind;                        // POST routes
} route;

static const route routes[] = {
    {"/v1/completions", "POST", NULL, API_COMPLETIONS},
    {"/v1/chat/completions", "POST", NULL, API_CHAT},
    {"/v1/models", "GET", handle_models, 0},
    {"/health", "GET", handle_health, 0},
    {"/metrics", "GET", handle_metrics, 0},
};

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size, void **con_cls) {
    server *s = cls;
    http_ctx *h = *con_cls;
    const route *rt = NULL;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (!strcmp(url, routes[i].path)) rt = &routes[i];
    if (!h) {   // the headers: answer what needs no body at once
        h = xcalloc(1, sizeof *h);
        h->srv = s;
        h->conn = conn;
        *con_cls = h;
        api_error e;
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        unsigned long long length = cl ? strtoull(cl, NULL, 10) : 0;
        // With a body, errors wait until it is read: answering first can reset the client.
        int has_body = length > 0 || MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Transfer-Encoding");
        // A body over the limit is refused before it is read when the client waits for our go
        // (Expect: 100-continue) or when reading it would take too long; else read and dropped.
        const char *expect = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Expect");
        if (length > s->o.max_body && (expect || length > 64 * s->o.max_body)) {
            api_fail(&e, 413, NULL, "request body of %llu bytes is larger than %zu bytes (--max-body)", length, s->o.max_body);
            return send_error(conn, s, &e, NULL);
        }
        if (!rt) {
            if (has_body) return MHD_YES;
            api_fail(&e, 404, NULL, "%.200s: no such route", url);
            return send_error(conn, s, &e, NULL);
        }
        if (strcmp(method, rt->method)) {
            if (has_body) return MHD_YES;
            api_fail(&e, 405, NULL, "%s %.200s: method not allowed (use %s)", method, url, rt->method);
            return send_error(conn, s, &e, rt->method);
        }
        if (rt->get) return rt->get(h);
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (h->too_big || h->body_len + n > s->o.max_body) {
            h->too_big = 1;
            h->discarded += n;
            if (h->discarded > 64 * s->o.max_body) {   // stop reading: answer and close
                api_error e;
                api_fail(&e, 413, NULL, "request body is larger than %zu bytes (--max-body)", s->o.max_body);
                return send_error(conn, s, &e, NULL);
            }
            return MHD_YES;
        }
        h->body = xrealloc(h->body, h->body_len + n + 1);
        memcpy(h->body + h->body_len, upload_data, n);
        h->body_len += n;
        h->body[h->body_len] = 0;
        return MHD_YES;
    }
    if (h->req || h->stream_done) return MHD_YES;   // answered already
    api_error e;
    if (!rt) {
        api_fail(&e, 404, NULL, "%.200s: no such route", url);
        return send_error(conn, s, &e, NULL);
    }
    if (strcmp(method, rt->method)) {
        api_fail(&e, 405, NULL, "%s %.200s: method not allowed (use %s)", method, url, rt->method);
        return send_error(conn, s, &e, rt->method);
    }
    if (h->too_big) {
        api_fail(&e, 413, NULL, "request body is larger than %zu bytes (--max-body)", s->o.max_body);
        return send_error(conn, s, &e, NULL);
    }
    return handle_generate(h, rt->kind);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode code) {
    http_ctx *h = *con_cls;
    if (!h) return;
    if (h->req) {   // the response ended before the generation (the client left)
        if (h->srv->o.verbose) fprintf(stderr, "llamoe-serve: request %lld: connection closed\n", (long long)h->req->number);
        finish_request(h);
    }
    if (h->queued) {
        server_lock(h->srv);
        h->srv->n_responding--;
        pthread_cond_broadcast(&h->srv->wake);
        server_unlock(h->srv);
    }
    if (h->text.text || h->text.stream) text_free(&h->text);
    free(h->body);
    free(h->out);
    free(h);
    *con_cls = NULL;
}

// ---------------------------------------------------------------------------- engine loop
static void deliver(server *s, const engine_token *t, int n) {
    for (int i = 0; i < n; i++) {
        request *r = s->running[t[i].seq];
        CHECK(r);
        if (r->n_ids == 0) {
            r->t_first_token = now_seconds();
            s->ttft_sum_s += r->t_first_token - r->t_arrival;
            s->ttft_count++;
        }
        r->ids[r->n_ids++] = t[i].token;
        s->generation_tokens++;
        if (t[i].stop != STOP_NONE) {
            r->state = REQ_DONE;
            r->stop = t[i].stop;
            if (r->stop == STOP_EOS) s->finished_stop++;
            else s->finished_length++;
            s->running[t[i].seq] = NULL;
            s->n_running--;
            request_release(r);
        }
        pthread_cond_broadcast(&r->changed);
    }
}

// Ends a request on the engine's side: cancelled by its client, or cut by a shutdown.
static void drop(server *s, engine *e, request *r, int cut) {
    if (r->state == REQ_RUNNING) {
        engine_leave(e, r->seq);
        s->running[r->seq] = NULL;
        s->n_running--;
    }
    if (cut) { r->aborted = 1; s->aborted++; }
    else if (r->matched_stop) s->finished_stop++;
    else s->cancelled++;
    r->state = REQ_DONE;
    pthread_cond_broadcast(&r->changed);
    request_release(r);
}

// Rank 0's main thread until shutdown.
static void engine_loop(server *s, engine *e) {
    llamoe_err err;
    server_lock(s);
    for (;;) {
        double now = now_seconds();
        int cut = s->stopping && now >= s->cut_at;
        for (int i = 0; i < s->slots_total; i++)
            if (s->running[i] && (s->running[i]->cancel || cut)) drop(s, e, s->running[i], cut && !s->running[i]->cancel);
        // The queue, oldest first: cancelled requests leave it, the rest take free slots.
        while (s->queue_head && (s->queue_head->cancel || s->stopping || engine_free_slots(e) > 0)) {
            request *r = s->queue_head;
            s->queue_head = r->next;
            if (!s->queue_head) s->queue_tail = NULL;
            s->n_queued--;
            if (r->cancel || s->stopping) { drop(s, e, r, !r->cancel); continue; }
            r->seq = engine_join(e, r->prompt, r->n_prompt, &r->sampling);
            CHECK(r->seq >= 0);
            r->state = REQ_RUNNING;
            s->running[r->seq] = r;
            s->n_running++;
        }
        if (s->stopping && s->http) {   // no new connections
            MHD_socket listener = MHD_quiesce_daemon(s->http);
            if (listener != MHD_INVALID_SOCKET) close(listener);
            s->http = NULL;
        }
        if (s->stopping && s->n_running == 0) break;
        server_unlock(s);
        const engine_token *tokens;
        int n_tokens;
        int st = engine_step(e, &tokens, &n_tokens, &err);
        if (st < 0) die("engine: %s", err.msg);
        server_lock(s);
        if (st == ENGINE_IDLE) {
            // Nothing runs: sleep until a request or a signal comes.
            while (!s->queue_head && !s->stopping) pthread_cond_wait(&s->wake, &s->lock);
            continue;
        }
        deliver(s, tokens, n_tokens);
        const engine_stats *es = engine_get_stats(e);
        s->engine = *es;
        int b = 0;
        while (b < N_STEP_BUCKETS && es->last_step_s > step_bucket_s[b]) b++;
        s->step_count[b]++;
        s->step_sum_s += es->last_step_s;
        if (s->tokens_per_expert)
            memcpy(s->tokens_per_expert, engine_tokens_per_expert(e), (size_t)s->n_layers * s->n_experts * sizeof(int64_t));
    }
    server_unlock(s);
    if (engine_shutdown(e, &err) != 0) die("engine: %s", err.msg);
}

// ---------------------------------------------------------------------------- signals
// SIGTERM and SIGINT are blocked in every thread (before MPI and the HTTP library start theirs)
// and taken by one thread. Rank 0 stops accepting, lets running requests finish for --drain
// seconds (none when the signal came from mpirun: it kills the ranks a second later), cuts the
// rest and ends the engine on every rank. Other ranks only note the signal: rank 0 tells them
// when to stop.
static pthread_mutex_t signal_lock = PTHREAD_MUTEX_INITIALIZER;
static server *signal_server;          // rank 0, once serving
static int signal_seen, signal_from_launcher;

static void stop_server(server *s, int signo, int from_launcher) {
    server_lock(s);
    if (!s->stopping) {
        s->stopping = 1;
        s->cut_at = now_seconds() + (from_launcher ? 0 : s->o.drain_s);
        fprintf(stderr, "llamoe-serve: %s: stopping; %s\n", strsignal(signo),
                from_launcher ? "mpirun ends the job: running requests are cut now" : "running requests may finish");
    } else {
        s->cut_at = 0;   // a second signal: cut now
    }
    pthread_cond_signal(&s->wake);
    server_unlock(s);
}

static void *signal_thread(void *arg) {
    const sigset_t *set = arg;
    for (;;) {
        siginfo_t info;
        if (sigwaitinfo(set, &info) < 0) continue;
        CHECK(pthread_mutex_lock(&signal_lock) == 0);
        signal_seen = info.si_signo;
        signal_from_launcher |= info.si_pid == getppid();
        if (signal_server) stop_server(signal_server, info.si_signo, signal_from_launcher);
        CHECK(pthread_mutex_unlock(&signal_lock) == 0);
    }
    return NULL;
}

static void set_signal_server(server *s) {
    CHECK(pthread_mutex_lock(&signal_lock) == 0);
    signal_server = s;
    if (s && signal_seen) stop_server(s, signal_seen, signal_from_launcher);   // came during the load
    CHECK(pthread_mutex_unlock(&signal_lock) == 0);
}

// ---------------------------------------------------------------------------- main
static struct MHD_Daemon *start_http(server *s, int *port) {
    struct addrinfo hints = {.ai_flags = AI_NUMERICHOST | AI_PASSIVE, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    char port_s[16];
    snprintf(port_s, sizeof port_s, "%d", s->o.port);
    int rc = getaddrinfo(s->o.host, port_s, &hints, &ai);
    if (rc != 0) die("--host %s: not a numeric IPv4 or IPv6 address (%s)", s->o.host, gai_strerror(rc));
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL_INTERNAL_THREAD | MHD_USE_ITC | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    unsigned limit = (unsigned)(s->slots_total + s->o.queue + 64);   // beyond this, connections are refused
    struct MHD_Daemon *d = MHD_start_daemon(flags, (uint16_t)s->o.port, NULL, NULL, on_request, s,
                                            MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                                            MHD_OPTION_CONNECTION_LIMIT, limit,
                                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)60,   // idle keep-alive connections close
                                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
                                            MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!d) die("--host %s --port %d: cannot listen there (%s)", s->o.host, s->o.port, strerror(errno));
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    *port = info ? info->port : s->o.port;
    return d;
}

int main(int argc, char **argv) {
    // Before any thread exists, so that every thread (MPI's, the HTTP library's) inherits it.
    static sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
    signal(SIGPIPE, SIG_IGN);

    comm *c = comm_mpi_init(&argc, &argv);
    serve_options o;
    llamoe_err err;
    int prc = parse_args(argc, argv, &o, &err);
    if (prc == 1) { if (c->rank == 0) usage(stdout); c->free(c); return 0; }
    if (prc != 0) die("%s", err.msg);
    pthread_t sig_thread;
    CHECK(pthread_create(&sig_thread, NULL, signal_thread, &stop_signals) == 0);
    pthread_detach(sig_thread);

    rank_binding binding;
    topology_bind_cpu(c->rank, c->size, c->local_rank, c->local_size, o.bind, &binding);
    backend *be = backend_cpu_new(&(backend_options){.threads = o.threads ? o.threads : binding.n_cores});

    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", o.model_dir);
    tokenizer *tok = NULL;
    if (file_exists(path) && !(tok = tokenizer_load(path, &err))) die("%s", err.msg);

    // Without --moe a dense checkpoint runs upcycle:8:2, as llamoe-ep does.
    moe_mode mode, *mode_arg = NULL;
    if (o.moe) {
        if (moe_mode_parse(o.moe, &mode, &err) != 0) die("%s", err.msg);
        mode_arg = &mode;
    } else {
        llama_config probe;
        if (config_load(&probe, o.model_dir, &err) != 0) die("%s", err.msg);
        if (!probe.is_mixtral) {
            moe_mode_parse("upcycle:8:2", &mode, &err);
            mode_arg = &mode;
        }
    }
    if (mode_arg) { mode.drop = o.drop; mode.seed = o.seed; }
    model m;
    if (model_load(&m, o.model_dir, mode_arg, be, c->rank, c->size, &err) != 0) die("%s", err.msg);
    int ctx = o.ctx ? o.ctx : m.cfg.max_position_embeddings < 2048 ? m.cfg.max_position_embeddings : 2048;
    if (ctx > m.cfg.max_position_embeddings)
        die("--ctx %d: longer than the model's max_position_embeddings %d (config.json)", ctx, m.cfg.max_position_embeddings);

    engine_options eo = {.kv_slots = o.kv_slots, .ctx = ctx, .step_tokens = o.step_tokens};
    engine *e = engine_new(&m, c, &eo);

    if (c->rank != 0) {
        // Engine steps until rank 0 ends the engine.
        const engine_token *t;
        int n;
        for (int st; (st = engine_step(e, &t, &n, &err)) != ENGINE_SHUTDOWN;)
            if (st < 0) die("engine: %s", err.msg);
    } else {
        server *s = xcalloc(1, sizeof *s);
        s->o = o;
        s->tok = tok;
        s->m = &m;
        s->ctx = ctx;
        s->slots_total = o.kv_slots * c->size;
        s->running = xcalloc((size_t)s->slots_total, sizeof *s->running);
        s->started = time(NULL);
        s->eot_id = s->header_start = s->header_end = -1;
        if (tok) {
            s->eot_id = tokenizer_token_id(tok, "<|eot_id|>");
            s->header_start = tokenizer_token_id(tok, "<|start_header_id|>");
            s->header_end = tokenizer_token_id(tok, "<|end_header_id|>");
        }
        // The served name: the model directory's last component.
        static char name[4096];
        snprintf(name, sizeof name, "%s", o.model_dir);
        for (size_t n = strlen(name); n > 1 && name[n - 1] == '/';) name[--n] = 0;
        s->name = o.served_name ? o.served_name : strrchr(name, '/') ? strrchr(name, '/') + 1 : name;
        if (m.moe.kind != MOE_DENSE) {
            s->n_layers = m.cfg.n_layers;
            s->n_experts = m.moe.n_experts;
            s->tokens_per_expert = xcalloc((size_t)s->n_layers * s->n_experts, sizeof(int64_t));
        }
        pthread_mutex_init(&s->lock, NULL);
        pthread_cond_init(&s->wake, NULL);

        int port;
        struct MHD_Daemon *http = start_http(s, &port);
        s->http = http;
        char mb[64];
        printf("llamoe-serve: listening on http://%s:%d (model %s, %s, %d rank(s), %d KV slots of %d positions per rank, pid %d)\n",
               o.host, port, s->name, moe_mode_str(&m.moe, mb, sizeof mb), c->size, o.kv_slots, ctx, (int)getpid());
        fflush(stdout);
        set_signal_server(s);

        engine_loop(s, e);
        // Every request is done; let their responses reach the clients, then close.
        server_lock(s);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 10;
        while (s->n_responding > 0 && pthread_cond_timedwait(&s->wake, &s->lock, &until) == 0) {}
        server_unlock(s);
        MHD_stop_daemon(http);
        set_signal_server(NULL);
        fprintf(stderr, "llamoe-serve: stopped\n");
        free(s->running);
        free(s->tokens_per_expert);
        free(s);
    }

    // mpirun tears the job down after forwarding a signal: its daemons leave and
    // MPI_Finalize would wait for them in vain, so then every rank just exits.
    CHECK(pthread_mutex_lock(&signal_lock) == 0);
    int64_t torn_down[1] = {signal_from_launcher};
    CHECK(pthread_mutex_unlock(&signal_lock) == 0);
    if (c->allreduce_sum_i64(c, torn_down, 1) != 0) die("allreduce failed");
    engine_free(e);
    model_free(&m);
    backend_free(be);
    tokenizer_free(tok);
    if (torn_down[0]) {
        fflush(NULL);
        _exit(0);
    }
    c->free(c);
    return 0;
}
