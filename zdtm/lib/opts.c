/*
 * opts.c - command-line options: the built-in protocol options and the typed options that
 * tests declare with TEST_OPTION(). Only "--name=value" (and bare "--name" for bools) is
 * accepted, like CRIU's zdtm library, so a typo is an error instead of a silent default.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "zdtmtst.h"
#include "zdtmtst_int.h"

char *test_pidfile;
char *test_outfile;
char *test_filename;
char *test_dirname;

static struct test_option builtin_opts[] = {
	{ .name = "pidfile", .type = TEST_OPT_string, .ptr = &test_pidfile,
	  .help = "where the starter writes the test's pid once it is ready", .required = true },
	{ .name = "outfile", .type = TEST_OPT_string, .ptr = &test_outfile,
	  .help = "the test's log; its last line is the verdict", .required = true },
	{ .name = "filename", .type = TEST_OPT_string, .ptr = &test_filename,
	  .help = "a file the test may create" },
	{ .name = "dirname", .type = TEST_OPT_string, .ptr = &test_dirname,
	  .help = "a directory the test may create" },
};

/* Test-declared options, in registration order reversed (order does not matter). */
static struct test_option *test_opts;

void test_register_option(struct test_option *opt)
{
	opt->next = test_opts;
	test_opts = opt;
}

void test_require_option(const char *name)
{
	for (size_t i = 0; i < sizeof(builtin_opts) / sizeof(builtin_opts[0]); i++)
		if (!strcmp(builtin_opts[i].name, name))
			builtin_opts[i].required = true;
}

static struct test_option *find_option(const char *name, size_t len)
{
	for (size_t i = 0; i < sizeof(builtin_opts) / sizeof(builtin_opts[0]); i++)
		if (strlen(builtin_opts[i].name) == len && !strncmp(builtin_opts[i].name, name, len))
			return &builtin_opts[i];
	for (struct test_option *o = test_opts; o; o = o->next)
		if (strlen(o->name) == len && !strncmp(o->name, name, len))
			return o;
	return NULL;
}

static const char *type_name(enum test_opt_type t)
{
	switch (t) {
	case TEST_OPT_int: return "int";
	case TEST_OPT_uint: return "uint";
	case TEST_OPT_string: return "string";
	case TEST_OPT_bool: return "bool";
	}
	return "?";
}

static void print_option(const struct test_option *o)
{
	fprintf(stderr, "  --%s=%s%s\t%s\n", o->name, type_name(o->type),
		o->required ? " (required)" : "", o->help);
}

static void usage(const char *prog)
{
	fprintf(stderr, "usage: %s --pidfile=FILE --outfile=FILE [options]\n", prog);
	for (size_t i = 0; i < sizeof(builtin_opts) / sizeof(builtin_opts[0]); i++)
		print_option(&builtin_opts[i]);
	for (struct test_option *o = test_opts; o; o = o->next)
		print_option(o);
}

/* Store the text value into the option's variable; -1 when it does not parse. */
static int set_value(struct test_option *o, const char *val)
{
	char *end;

	switch (o->type) {
	case TEST_OPT_string:
		*(char **)o->ptr = (char *)val;
		return 0;
	case TEST_OPT_int: {
		long v;

		errno = 0;
		v = strtol(val, &end, 0);
		if (errno || end == val || *end || v < INT_MIN || v > INT_MAX)
			return -1;
		*(int *)o->ptr = (int)v;
		return 0;
	}
	case TEST_OPT_uint: {
		unsigned long v;

		errno = 0;
		/* strtoul silently negates "-1"; refuse any sign. */
		if (strchr(val, '-'))
			return -1;
		v = strtoul(val, &end, 0);
		if (errno || end == val || *end || v > UINT_MAX)
			return -1;
		*(unsigned int *)o->ptr = (unsigned int)v;
		return 0;
	}
	case TEST_OPT_bool:
		if (!strcmp(val, "1") || !strcmp(val, "yes") || !strcmp(val, "true"))
			*(bool *)o->ptr = true;
		else if (!strcmp(val, "0") || !strcmp(val, "no") || !strcmp(val, "false"))
			*(bool *)o->ptr = false;
		else
			return -1;
		return 0;
	}
	return -1;
}

void test_parse_options(int argc, char **argv)
{
	bool bad = false;

	for (int i = 1; i < argc; i++) {
		const char *arg = argv[i], *eq;
		struct test_option *o;

		if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
			usage(argv[0]);
			exit(0);
		}
		if (strncmp(arg, "--", 2)) {
			fprintf(stderr, "%s: unexpected argument '%s'\n", argv[0], arg);
			bad = true;
			continue;
		}
		arg += 2;
		eq = strchr(arg, '=');
		o = find_option(arg, eq ? (size_t)(eq - arg) : strlen(arg));
		if (!o) {
			fprintf(stderr, "%s: unknown option '%s'\n", argv[0], argv[i]);
			bad = true;
			continue;
		}
		if (!eq && o->type != TEST_OPT_bool) {
			fprintf(stderr, "%s: option --%s needs a value\n", argv[0], o->name);
			bad = true;
			continue;
		}
		if (set_value(o, eq ? eq + 1 : "1")) {
			fprintf(stderr, "%s: bad %s value in '%s'\n", argv[0], type_name(o->type),
				argv[i]);
			bad = true;
			continue;
		}
		o->seen = true;
	}
	for (size_t i = 0; i < sizeof(builtin_opts) / sizeof(builtin_opts[0]); i++)
		if (builtin_opts[i].required && !builtin_opts[i].seen) {
			fprintf(stderr, "%s: missing --%s\n", argv[0], builtin_opts[i].name);
			bad = true;
		}
	for (struct test_option *o = test_opts; o; o = o->next)
		if (o->required && !o->seen) {
			fprintf(stderr, "%s: missing --%s\n", argv[0], o->name);
			bad = true;
		}
	if (bad) {
		usage(argv[0]);
		exit(2);
	}
}
