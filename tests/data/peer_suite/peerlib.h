/*
 * peerlib: a minimal zdtm-protocol library of the fixture "peer suite" (another project's
 * test suite, as the harness meets it with --tests-dir).  Deliberately independent of
 * zdtm/lib: the harness must cope with any library speaking the protocol.
 *
 *   ./NAME --pidfile=F --outfile=O [--OPT=VALUE ...]
 *
 * peer_init() parses the options (unknown or missing mandatory ones: message, exit 2), forks
 * a daemon with its output in O, and returns in the daemon; peer_ready() makes the starter
 * write F (atomically) and exit 0.  peer_wait_term() returns once SIGTERM came; the test then
 * writes its verdict with peer_pass() or peer_fail().
 */
#ifndef PEERLIB_H
#define PEERLIB_H

struct peer_opt {
	const char *name;	/* option name without dashes; stays a C string in the binary */
	const char **value;
	int mandatory;
};

void peer_init(int argc, char **argv, struct peer_opt *opts);
void peer_ready(void);
int peer_term_requested(void);
void peer_wait_term(void);
void peer_pass(void);
void peer_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
