/* zdtmtst_int.h - library-internal declarations shared between the lib's modules. */
#ifndef ZDTMTST_INT_H
#define ZDTMTST_INT_H

#include <time.h>

extern char *test_pidfile;
extern char *test_outfile;

/* Parse argv into the built-in and declared options; exits 0 on --help, 2 on errors. */
void test_parse_options(int argc, char **argv);

/* The time timeout_ms from now on clock clk, for the waits that have a deadline. */
void test_deadline(clockid_t clk, int timeout_ms, struct timespec *end);
/* Milliseconds left until end on clock clk; 0 or less when it has passed. */
long test_ms_left(clockid_t clk, const struct timespec *end);

#endif /* ZDTMTST_INT_H */
