// base/args: every accepted form gives the value, every other form one line naming the flag
// and the value; getopt_long's errors read the same in every program. Usage: test_args
#include "base/args.h"

#include <getopt.h>
#include <math.h>
#include <string.h>

static int passed, failed;

#define EXPECT(cond, ...) do { \
    if (cond) passed++; \
    else { failed++; printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } \
} while (0)

static void test_int(void) {
    static const struct { const char *s; int lo, hi, ok, want; } cases[] = {
        {"0", 0, 10, 1, 0}, {"10", 0, 10, 1, 10}, {"-3", -5, 5, 1, -3}, {"+7", 0, 10, 1, 7}, {"007", 0, 10, 1, 7},
        {"2147483647", 0, 2147483647, 1, 2147483647}, {"-2147483648", -2147483647 - 1, 0, 1, -2147483647 - 1},
        {"11", 0, 10, 0, 0}, {"-1", 0, 10, 0, 0}, {"", 0, 10, 0, 0}, {"12abc", 0, 100, 0, 0}, {" 5", 0, 10, 0, 0},
        {"5 ", 0, 10, 0, 0}, {"0x10", 0, 100, 0, 0}, {"1.0", 0, 10, 0, 0}, {"-", 0, 10, 0, 0}, {"+-1", -5, 5, 0, 0},
        {"99999999999999999999", 0, 2147483647, 0, 0}, {"2147483648", 0, 2147483647, 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int v = -12345;
        llamoe_err err = {""};
        int rc = arg_int("--n", cases[i].s, cases[i].lo, cases[i].hi, &v, &err);
        if (cases[i].ok) EXPECT(rc == 0 && v == cases[i].want, "'%s' -> rc %d, %d", cases[i].s, rc, v);
        else EXPECT(rc == -1 && v == -12345 && !strncmp(err.msg, "--n: expected an integer in [", 29),
                    "'%s' -> rc %d, %d, '%s'", cases[i].s, rc, v, err.msg);
    }
    llamoe_err err;
    int v;
    arg_int("-n", "-3", 0, 16, &v, &err);
    EXPECT(!strcmp(err.msg, "-n: expected an integer in [0, 16], got '-3'"), "%s", err.msg);
}

static void test_u64(void) {
    static const struct { const char *s; int ok; uint64_t want; } cases[] = {
        {"0", 1, 0}, {"1234", 1, 1234}, {"18446744073709551615", 1, UINT64_MAX}, {"0x10", 1, 16},
        {"0XfF", 1, 255}, {"010", 1, 10}, {"-1", 0, 0}, {"+1", 0, 0}, {"", 0, 0}, {"12abc", 0, 0}, {" 1", 0, 0},
        {"18446744073709551616", 0, 0}, {"0x", 0, 0}, {"0x-5", 0, 0}, {"abc", 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint64_t v = 42;
        llamoe_err err = {""};
        int rc = arg_u64("--seed", cases[i].s, 0, UINT64_MAX, &v, &err);
        if (cases[i].ok) EXPECT(rc == 0 && v == cases[i].want, "'%s' -> rc %d, %llu", cases[i].s, rc, (unsigned long long)v);
        else EXPECT(rc == -1 && v == 42 && strstr(err.msg, "--seed: expected an integer in [0, 18446744073709551615], got '"),
                    "'%s' -> rc %d, '%s'", cases[i].s, rc, err.msg);
    }
    uint64_t v;
    llamoe_err err;
    EXPECT(arg_u64("--k", "9", 1, 8, &v, &err) == -1 && !strcmp(err.msg, "--k: expected an integer in [1, 8], got '9'"), "%s", err.msg);
}

static void test_float(void) {
    static const struct { const char *s; int ok; float want; } cases[] = {
        {"0", 1, 0.0f}, {"1", 1, 1.0f}, {"0.5", 1, 0.5f}, {"1e-1", 1, 0.1f}, {".25", 1, 0.25f}, {"1.", 1, 1.0f},
        {"1.5x", 0, 0}, {"1.5", 0, 0}, {"-0.1", 0, 0}, {"", 0, 0}, {" 0.5", 0, 0}, {"0.5 ", 0, 0}, {"nan", 0, 0},
        {"inf", 0, 0}, {"-inf", 0, 0}, {"x", 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        float f = -7;
        double d = -7;
        llamoe_err err = {""}, err2 = {""};
        int rc = arg_float("--drop", cases[i].s, 0.0f, 1.0f, &f, &err);
        int rc2 = arg_double("--drop", cases[i].s, 0.0, 1.0, &d, &err2);
        if (cases[i].ok) EXPECT(rc == 0 && f == cases[i].want && rc2 == 0 && d == strtod(cases[i].s, NULL),
                                "'%s' -> rc %d %d, %g %g", cases[i].s, rc, rc2, f, d);
        else EXPECT(rc == -1 && rc2 == -1 && f == -7 && d == -7 && !strcmp(err.msg, err2.msg) &&
                    !strncmp(err.msg, "--drop: expected a number in [0, 1], got '", 42),
                    "'%s' -> rc %d %d, '%s' '%s'", cases[i].s, rc, rc2, err.msg, err2.msg);
    }
    llamoe_err err;
    float f;
    arg_float("--drop", "1.5x", 0, 1, &f, &err);
    EXPECT(!strcmp(err.msg, "--drop: expected a number in [0, 1], got '1.5x'"), "%s", err.msg);
    // strtof rounds once: the value equals what llamoe-ep read before the shared parser.
    EXPECT(arg_float("--temp", "0.1", 0, 100, &f, &err) == 0 && f == strtof("0.1", NULL), "strtof");
}

static void test_positive(void) {
    double v = -1;
    llamoe_err err;
    EXPECT(arg_positive("--shard-gb", "0.002", 1e6, &v, &err) == 0 && v == 0.002, "0.002");
    EXPECT(arg_positive("--shard-gb", "1e6", 1e6, &v, &err) == 0 && v == 1e6, "1e6");
    const char *bad[] = {"0", "-1", "0.0", "1e7", "", "5G", "nan"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        EXPECT(arg_positive("--shard-gb", bad[i], 1e6, &v, &err) == -1 &&
               strstr(err.msg, "--shard-gb: expected a number in (0, 1e+06], got '"), "'%s' -> '%s'", bad[i], err.msg);
}

// A value that would break the one-line rule or flood the terminal is shown tamed.
static void test_shown(void) {
    llamoe_err err;
    int v;
    arg_int("--n", "1\n2", 0, 9, &v, &err);
    EXPECT(!strchr(err.msg, '\n') && strstr(err.msg, "got '1?2'"), "%s", err.msg);
    char longv[300];
    memset(longv, '7', sizeof longv - 1);
    longv[sizeof longv - 1] = 0;
    arg_int("--n", longv, 0, 9, &v, &err);
    EXPECT(strlen(err.msg) < 160 && strstr(err.msg, "...'"), "%s", err.msg);
}

// getopt_long's errors, from the same option table style the programs use.
static const char *getopt_message(int argc, char **argv) {
    static const struct option longs[] = {{"shards", 1, 0, 256}, {"force", 0, 0, 257}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    static llamoe_err err;
    optind = 0;   // glibc: 0 reinitialises getopt, for each new argument vector
    opterr = 0;
    int c;
    strcpy(err.msg, "(no error)");
    while ((c = getopt_long(argc, argv, ":o:h", longs, NULL)) != -1)
        if (c == '?' || c == ':') { arg_getopt_error(c, argv, &err); break; }
    return err.msg;
}

static void test_getopt(void) {
    static const struct { const char *args[4]; const char *want; } cases[] = {
        {{"prog", "--frobnicate"}, "--frobnicate: unknown option (see --help)"},
        {{"prog", "--frob=1"}, "--frob=1: unknown option (see --help)"},
        {{"prog", "-x"}, "-x: unknown option (see --help)"},
        {{"prog", "-hx"}, "-x: unknown option (see --help)"},
        {{"prog", "-o"}, "-o: missing value (see --help)"},
        {{"prog", "--shards"}, "--shards: missing value (see --help)"},
        {{"prog", "--force=1"}, "--force=1: takes no value (see --help)"},
        {{"prog", "-o", "x", "--shards=2"}, "(no error)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *argv[5] = {0};
        int argc = 0;
        while (argc < 4 && cases[i].args[argc]) { argv[argc] = (char *)cases[i].args[argc]; argc++; }
        const char *got = getopt_message(argc, argv);
        EXPECT(!strcmp(got, cases[i].want), "%s: got '%s', want '%s'", cases[i].args[1], got, cases[i].want);
    }
}

int main(void) {
    test_int();
    test_u64();
    test_float();
    test_positive();
    test_shown();
    test_getopt();
    printf("test_args: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
