/*
 * thread_churn (transition): threads are created and joined without pause while being
 * dumped. Thread number N fills a buffer on its own stack with the data of seed N, keeps
 * N in a TLS variable, and returns the CRC; the main thread joins each one and checks the
 * CRC and the TLS value the thread reports. After SIGTERM the rest are joined (with a
 * deadline): created == joined, every result right.
 */
#include <time.h>
#include <unistd.h>

#include "zdtmtst.h"

#define MAX_LIVE 3
#define BUF_LEN 8192

struct job {
	pthread_t th;
	bool live;
	uint64_t n;
	uint32_t crc;	/* filled by the thread */
	uint64_t tls_seen;
};

static __thread uint64_t tls_n;
static struct job jobs[MAX_LIVE];
static uint64_t created, joined;

static void *worker(void *arg)
{
	struct job *j = arg;
	struct timespec life = { 0, (long)(j->n % 5) * 200 * 1000 };
	unsigned char buf[BUF_LEN];

	tls_n = j->n;
	datafill(buf, sizeof(buf), j->n);
	nanosleep(&life, NULL);
	j->crc = crc32_update(0, buf, sizeof(buf));
	j->tls_seen = tls_n;
	return (void *)(uintptr_t)j->n;
}

/* The CRC thread n must report. */
static uint32_t expected_crc(uint64_t n)
{
	static unsigned char buf[BUF_LEN];

	datafill(buf, sizeof(buf), n);
	return crc32_update(0, buf, sizeof(buf));
}

static int check_join(struct job *j, void *ret)
{
	j->live = false;
	joined++;
	if ((uintptr_t)ret != j->n || j->tls_seen != j->n || j->crc != expected_crc(j->n))
		return fail("thread #%llu returned %llu, TLS %llu, crc %#x (expected %#x)",
			    (unsigned long long)j->n, (unsigned long long)(uintptr_t)ret,
			    (unsigned long long)j->tls_seen, j->crc, expected_crc(j->n));
	return 0;
}

int main(int argc, char **argv)
{
	struct timespec nap = { 0, 300 * 1000 };
	void *ret;
	int err;

	test_init(argc, argv);

	test_daemon();

	while (test_go()) {
		for (int i = 0; i < MAX_LIVE; i++) {
			struct job *j = &jobs[i];

			if (j->live) {
				err = pthread_tryjoin_np(j->th, &ret);
				if (err == EBUSY)
					continue;
				if (err) {
					errno = err;
					return fail_perror("join #%llu", (unsigned long long)j->n);
				}
				if (check_join(j, ret))
					return 1;
			}
			*j = (struct job){ .live = true, .n = ++created };
			if (test_thread_create(&j->th, worker, j))
				return fail_perror("pthread_create #%llu", (unsigned long long)created);
		}
		nanosleep(&nap, NULL);
	}

	for (int i = 0; i < MAX_LIVE; i++) {
		if (!jobs[i].live)
			continue;
		if (test_thread_join(jobs[i].th, &ret, 10000))
			return fail_perror("join #%llu", (unsigned long long)jobs[i].n);
		if (check_join(&jobs[i], ret))
			return 1;
	}
	test_msg("%llu threads created, %llu joined", (unsigned long long)created,
		 (unsigned long long)joined);
	if (created != joined || !created)
		return fail("created %llu threads, joined %llu", (unsigned long long)created,
			    (unsigned long long)joined);
	return pass();
}
