// llamoe-tokenize: check how a prompt tokenizes, or what ids say.
//   llamoe-tokenize [-m DIR] [--no-special] TEXT     ids on one line, space separated
//                                                     (TEXT "-" reads standard input)
//   llamoe-tokenize [-m DIR] --decode ID...          the text
// DIR holds tokenizer.json (default: the bundled stories260k model). Without --no-special the
// post-processor adds BOS and special-token strings in TEXT become their ids; with it neither.
#include "runtime/tokenizer.h"

#include <errno.h>
#include <string.h>

static _Noreturn void usage(void) {
    fprintf(stderr, "usage: llamoe-tokenize [-m DIR] [--no-special] TEXT|-\n"
                    "       llamoe-tokenize [-m DIR] --decode ID...\n");
    exit(2);
}

static char *read_stdin(size_t *len) {
    size_t cap = 1 << 16, n = 0, got;
    char *buf = xmalloc(cap);
    while ((got = fread(buf + n, 1, cap - n - 1, stdin)) > 0) {
        n += got;
        if (cap - n - 1 == 0) {
            cap *= 2;
            buf = xrealloc(buf, cap);
        }
    }
    if (ferror(stdin)) die("cannot read standard input");
    buf[n] = 0;
    *len = n;
    return buf;
}

static int32_t parse_id(const char *s, int vocab_size) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end) die("--decode: \"%s\" is not a token id", s);
    if (v < 0 || v >= vocab_size) die("--decode: token id %lld is out of range (vocab size %d)", v, vocab_size);
    return (int32_t)v;
}

int main(int argc, char **argv) {
    const char *dir = LLAMOE_SOURCE_DIR "/models/stories260k";
    int special = 1, decode = 0, i = 1;
    for (; i < argc; i++) {
        if (!strcmp(argv[i], "-m")) {
            if (++i >= argc) usage();
            dir = argv[i];
        } else if (!strcmp(argv[i], "--no-special")) special = 0;
        else if (!strcmp(argv[i], "--decode")) decode = 1;
        else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) usage();
        else if (!strcmp(argv[i], "--")) { i++; break; }
        else if (argv[i][0] == '-' && argv[i][1] && !decode) die("unknown option %s (try --help)", argv[i]);
        else break;
    }
    int n_args = argc - i;
    if (decode ? n_args < 1 : n_args != 1) usage();

    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    llamoe_err err;
    tokenizer *t = tokenizer_load(path, &err);
    if (!t) die("%s", err.msg);

    if (decode) {
        int32_t *ids = xmalloc((size_t)n_args * sizeof *ids);
        for (int k = 0; k < n_args; k++) ids[k] = parse_id(argv[i + k], tokenizer_vocab_size(t));
        char *text;
        size_t len;
        if (tokenizer_decode(t, ids, n_args, &text, &len, &err)) die("%s", err.msg);
        fwrite(text, 1, len, stdout);
        putchar('\n');
        free(text);
        free(ids);
    } else {
        size_t len = strlen(argv[i]);
        char *text = !strcmp(argv[i], "-") ? read_stdin(&len) : xstrdup(argv[i]);
        int32_t *ids;
        int n;
        if (tokenizer_encode(t, text, len, special, special, &ids, &n, &err)) die("%s", err.msg);
        free(text);
        for (int k = 0; k < n; k++) printf(k ? " %d" : "%d", ids[k]);
        putchar('\n');
        free(ids);
    }
    tokenizer_free(t);
    return fflush(stdout) == 0 ? 0 : 1;
}
