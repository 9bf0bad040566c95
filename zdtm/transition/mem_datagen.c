/*
 * mem_datagen (transition): memory rewritten without pause while being dumped.
 *
 * The memory is split in chunks; step N rewrites chunk N % nchunks with fresh data and
 * records its CRC in a table, then stores N in the --filename file (outside the process's
 * memory). After SIGTERM every chunk must match its recorded CRC, and the step counter in
 * memory may never be behind the one in the file: an engine that restores stale pages (a
 * lost last increment of an incremental dump, say) makes memory go back in time.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "zdtmtst.h"

TEST_NEEDS_FILENAME();

static unsigned int mem_mb = 8;
TEST_OPTION(mem_mb, uint, "MiB of memory to keep rewriting", false);

#define CHUNK (64UL << 10)

int main(int argc, char **argv)
{
	struct timespec nap = { 0, 100 * 1000 };
	uint64_t step = 0, on_disk = 0;
	size_t nchunks;
	uint32_t *crcs;
	char *area;
	int fd;

	test_init(argc, argv);
	if (!mem_mb || mem_mb > 4096) {
		pr_err("--mem_mb=%u is out of range 1..4096", mem_mb);
		return 1;
	}
	nchunks = ((size_t)mem_mb << 20) / CHUNK;
	area = mmap(NULL, nchunks * CHUNK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		    -1, 0);
	crcs = calloc(nchunks, sizeof(*crcs));
	fd = open(test_filename, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (area == MAP_FAILED || !crcs || fd < 0) {
		pr_perror("setup");
		return 1;
	}
	for (size_t i = 0; i < nchunks; i++) {
		crcs[i] = (uint32_t)i;
		datagen(area + i * CHUNK, CHUNK, &crcs[i]);
	}
	test_msg("%zu chunks of %lu KiB", nchunks, CHUNK >> 10);

	test_daemon();

	while (test_go()) {
		size_t k = step % nchunks;
		uint32_t crc = (uint32_t)(step + nchunks);

		datagen(area + k * CHUNK, CHUNK, &crc);
		crcs[k] = crc;
		step++;
		if (pwrite(fd, &step, sizeof(step), 0) != sizeof(step))
			return fail_perror("pwrite step %llu", (unsigned long long)step);
		nanosleep(&nap, NULL);
	}

	if (pread(fd, &on_disk, sizeof(on_disk), 0) != sizeof(on_disk))
		return fail_perror("pread");
	test_msg("%llu steps (file says %llu)", (unsigned long long)step,
		 (unsigned long long)on_disk);
	if (step == 0)
		return fail("no step was made");
	if (on_disk > step)
		fail("the step counter went back: memory %llu, file %llu",
		     (unsigned long long)step, (unsigned long long)on_disk);
	for (size_t i = 0; i < nchunks; i++) {
		uint32_t crc = crcs[i];

		if (datachk(area + i * CHUNK, CHUNK, &crc))
			return fail("chunk %zu has CRC %#x, recorded %#x", i, crc, crcs[i]);
	}
	return pass();
}
