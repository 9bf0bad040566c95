/* zdtmtst_int.h - library-internal declarations shared between the lib's modules. */
#ifndef ZDTMTST_INT_H
#define ZDTMTST_INT_H

extern char *test_pidfile;
extern char *test_outfile;

/* Parse argv into the built-in and declared options; exits 0 on --help, 2 on errors. */
void test_parse_options(int argc, char **argv);

#endif /* ZDTMTST_INT_H */
