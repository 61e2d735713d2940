// llamoe-tokenize: check how a prompt tokenizes, or what ids say.
//   llamoe-tokenize [-m DIR] [--no-special] TEXT     ids on one line, space separated
//                                                     (TEXT "-" reads standard input)
//   llamoe-tokenize [-m DIR] --decode ID...          the text
// DIR holds tokenizer.json (default: the bundled stories260k model). Without --no-special the
// post-processor adds BOS and special-token strings in TEXT become their ids; with it neither.
#include "base/args.h"
#include "runtime/tokenizer.h"

#include <getopt.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f, "usage: llamoe-tokenize [-m DIR] [--no-special] TEXT|-\n"
               "       llamoe-tokenize [-m DIR] --decode ID...\n"
               "DIR holds tokenizer.json (default: the bundled stories260k model).\n");
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

int main(int argc, char **argv) {
    const char *dir = LLAMOE_SOURCE_DIR "/models/stories260k";
    int special = 1, decode = 0;
    enum { O_NO_SPECIAL = 256, O_DECODE };
    static const struct option longs[] = {
        {"no-special", 0, 0, O_NO_SPECIAL}, {"decode", 0, 0, O_DECODE}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    llamoe_err err;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":m:h", longs, NULL)) != -1) {
        switch (c) {
        case 'm': dir = optarg; break;
        case O_NO_SPECIAL: special = 0; break;
        case O_DECODE: decode = 1; break;
        case 'h': usage(stdout); return 0;
        default: arg_getopt_error(c, argv, &err); die("%s", err.msg);
        }
    }
    int i = optind, n_args = argc - optind;
    if (decode && n_args < 1) die("--decode: expected at least one token id (see --help)");
    if (!decode && n_args != 1) die("expected one TEXT (- for standard input), got %d arguments (see --help)", n_args);

    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    tokenizer *t = tokenizer_load(path, &err);
    if (!t) die("%s", err.msg);

    if (decode) {
        int32_t *ids = xmalloc((size_t)n_args * sizeof *ids);
        for (int k = 0, id; k < n_args; k++) {   // ids are in [0, vocab size)
            if (arg_int("--decode", argv[i + k], 0, tokenizer_vocab_size(t) - 1, &id, &err) != 0) die("%s", err.msg);
            ids[k] = id;
        }
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
