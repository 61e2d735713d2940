// Command-line values for every program: numbers checked for form and range, and getopt's
// errors, all reported the same way. Each function returns 0, or -1 with one line in err
// naming the flag and the value as given, for example
//   --drop: expected a number in [0, 1], got '1.5x'
// so that programs die() with it and tests and fuzzers call the parsers without exiting.
#pragma once
#include "base/common.h"

// Decimal integers with an optional sign; nothing before or after the digits.
int arg_int(const char *flag, const char *s, int lo, int hi, int *out, llamoe_err *err);
// Decimal digits, or 0x and hex digits (seeds); no sign.
int arg_u64(const char *flag, const char *s, uint64_t lo, uint64_t hi, uint64_t *out, llamoe_err *err);
// Numbers as strtof/strtod read them (1, 0.5, 1e-3); NaN and infinities fail the range.
int arg_float(const char *flag, const char *s, float lo, float hi, float *out, llamoe_err *err);
int arg_double(const char *flag, const char *s, double lo, double hi, double *out, llamoe_err *err);
// A number in (0, hi]: sizes and budgets, where 0 means nothing sensible.
int arg_positive(const char *flag, const char *s, double hi, double *out, llamoe_err *err);

// After getopt_long returned '?' or ':' (programs set opterr = 0 and start the short
// options with ':'): "--frobnicate: unknown option (see --help)", "-o: missing value (see
// --help)" or "--force=1: takes no value (see --help)".
int arg_getopt_error(int c, char **argv, llamoe_err *err);
