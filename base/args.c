#include "base/args.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <string.h>

// The value as given, for a message: at most 64 bytes, control bytes as '?' so that the
// message stays one line.
static const char *shown(const char *s, char *buf, size_t cap) {
    size_t n = 0;
    for (; s[n] && n + 4 < cap && n < 64; n++) buf[n] = iscntrl((unsigned char)s[n]) ? '?' : s[n];
    if (s[n]) buf[n++] = '.', buf[n++] = '.', buf[n++] = '.';
    buf[n] = 0;
    return buf;
}

int arg_int(const char *flag, const char *s, int lo, int hi, int *out, llamoe_err *err) {
    const char *digits = s + (*s == '+' || *s == '-');
    char *end;
    errno = 0;
    long long v = isdigit((unsigned char)*digits) ? strtoll(s, &end, 10) : 0;
    if (!isdigit((unsigned char)*digits) || errno || *end || v < lo || v > hi) {
        char b[80];
        return fail(err, "%s: expected an integer in [%d, %d], got '%s'", flag, lo, hi, shown(s, b, sizeof b));
    }
    *out = (int)v;
    return 0;
}

int arg_u64(const char *flag, const char *s, uint64_t lo, uint64_t hi, uint64_t *out, llamoe_err *err) {
    int hex = s[0] == '0' && (s[1] == 'x' || s[1] == 'X');
    const char *digits = s + 2 * hex;
    int form = hex ? isxdigit((unsigned char)*digits) : isdigit((unsigned char)*digits);
    char *end;
    errno = 0;
    unsigned long long v = form ? strtoull(digits, &end, hex ? 16 : 10) : 0;
    if (!form || errno || *end || v < lo || v > hi) {   // strtoull alone takes "-1", " 1" and "1x"
        char b[80];
        return fail(err, "%s: expected an integer in [%llu, %llu], got '%s'", flag, (unsigned long long)lo,
                    (unsigned long long)hi, shown(s, b, sizeof b));
    }
    *out = (uint64_t)v;
    return 0;
}

// strtod's forms, but nothing before or after the number (it skips leading blanks).
static int number_form_ok(const char *s, const char *end) { return end != s && !*end && !isspace((unsigned char)*s); }

int arg_float(const char *flag, const char *s, float lo, float hi, float *out, llamoe_err *err) {
    char *end;
    float v = strtof(s, &end);   // strtof, not (float)strtod: one rounding, as before
    if (!number_form_ok(s, end) || !(v >= lo && v <= hi)) {   // NaN fails the range test too
        char b[80];
        return fail(err, "%s: expected a number in [%g, %g], got '%s'", flag, lo, hi, shown(s, b, sizeof b));
    }
    *out = v;
    return 0;
}

int arg_double(const char *flag, const char *s, double lo, double hi, double *out, llamoe_err *err) {
    char *end;
    double v = strtod(s, &end);
    if (!number_form_ok(s, end) || !(v >= lo && v <= hi)) {
        char b[80];
        return fail(err, "%s: expected a number in [%g, %g], got '%s'", flag, lo, hi, shown(s, b, sizeof b));
    }
    *out = v;
    return 0;
}

int arg_positive(const char *flag, const char *s, double hi, double *out, llamoe_err *err) {
    char *end;
    double v = strtod(s, &end);
    if (!number_form_ok(s, end) || !(v > 0 && v <= hi)) {
        char b[80];
        return fail(err, "%s: expected a number in (0, %g], got '%s'", flag, hi, shown(s, b, sizeof b));
    }
    *out = v;
    return 0;
}

int arg_getopt_error(int c, char **argv, llamoe_err *err) {
    // argv[optind - 1] is the offending word, except for a short option inside a cluster
    // (-xq), where optopt names it.
    const char *given = argv[optind - 1];
    char b[80];
    if (c == ':') return fail(err, "%s: missing value (see --help)", shown(given, b, sizeof b));
    if (optopt == 0) return fail(err, "%s: unknown option (see --help)", shown(given, b, sizeof b));
    if (!strncmp(given, "--", 2) && strchr(given, '='))
        return fail(err, "%s: takes no value (see --help)", shown(given, b, sizeof b));
    if (optopt > 0 && optopt < 128 && isprint(optopt)) return fail(err, "-%c: unknown option (see --help)", optopt);
    return fail(err, "%s: unknown option (see --help)", shown(given, b, sizeof b));
}
