/*
 * data.c - deterministic test data and its CRC32.
 *
 * The byte stream of a seed is xorshift64* output, so a checker can regenerate exactly what
 * was written (datacmp) or compare a CRC (datachk) without keeping a copy.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "zdtmtst.h"

/* Slicing-by-8 tables: crc_table[k][b] is the CRC of byte b followed by k zero bytes. */
static uint32_t crc_table[8][256];
static bool crc_table_ready;

static void crc_table_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;

		for (int k = 0; k < 8; k++)
			c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
		crc_table[0][i] = c;
	}
	for (int k = 1; k < 8; k++)
		for (int i = 0; i < 256; i++)
			crc_table[k][i] = (crc_table[k - 1][i] >> 8) ^
					  crc_table[0][crc_table[k - 1][i] & 0xff];
	crc_table_ready = true;
}

uint32_t crc32_update(uint32_t crc, const void *buf, size_t len)
{
	const unsigned char *p = buf;
	uint32_t lo, hi;

	/* Racing threads would compute the same tables: no lock needed. */
	if (!crc_table_ready)
		crc_table_init();
	crc = ~crc;
	/* Eight bytes per step (x86 is little-endian): the test data is tens of MiB. */
	for (; len >= 8; len -= 8, p += 8) {
		memcpy(&lo, p, 4);
		memcpy(&hi, p + 4, 4);
		lo ^= crc;
		crc = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
		      crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^
		      crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
		      crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
	}
	while (len--)
		crc = crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return ~crc;
}

/* One xorshift64* step; the state must never be 0. */
static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 0x2545F4914F6CDD1DULL;
}

static uint64_t rng_seed(uint64_t seed)
{
	/* Spread small seeds (page numbers, 0, 1, ...) over the whole state space. */
	seed = (seed ^ 0x9E3779B97F4A7C15ULL) * 0xBF58476D1CE4E5B9ULL;
	return seed ? seed : 1;
}

void datafill(void *buf, size_t len, uint64_t seed)
{
	unsigned char *p = buf;
	uint64_t s = rng_seed(seed), v;

	for (; len >= sizeof(v); len -= sizeof(v), p += sizeof(v)) {
		v = rng_next(&s);
		memcpy(p, &v, sizeof(v));
	}
	if (len) {
		v = rng_next(&s);
		memcpy(p, &v, len);
	}
}

ssize_t datacmp(const void *buf, size_t len, uint64_t seed)
{
	const unsigned char *p = buf;
	uint64_t s = rng_seed(seed), v;
	size_t off = 0;

	while (off < len) {
		size_t n = len - off < sizeof(v) ? len - off : sizeof(v);

		v = rng_next(&s);
		if (memcmp(p + off, &v, n)) {
			const unsigned char *e = (const unsigned char *)&v;

			for (size_t i = 0; i < n; i++)
				if (p[off + i] != e[i])
					return (ssize_t)(off + i);
		}
		off += n;
	}
	return -1;
}

void datagen(void *buf, size_t len, uint32_t *crc)
{
	datafill(buf, len, *crc);
	*crc = crc32_update(0, buf, len);
}

int datachk(const void *buf, size_t len, uint32_t *crc)
{
	uint32_t actual = crc32_update(0, buf, len);

	if (actual == *crc)
		return 0;
	*crc = actual;
	return -1;
}

int test_data_check(const char *file, int line, const void *buf, size_t len, uint64_t seed)
{
	ssize_t off = datacmp(buf, len, seed);

	if (off >= 0)
		return test_fail(file, line, 0, "data at %p differs at offset %zd", buf, off);
	return 0;
}

int test_write_data(int fd, void *data, size_t len, uint64_t seed, off_t pos)
{
	datafill(data, len, seed);
	if (write(fd, data, len) != (ssize_t)len || lseek(fd, pos, SEEK_SET) != pos) {
		pr_perror("write %zu bytes, seek to %lld", len, (long long)pos);
		return -1;
	}
	return 0;
}

int test_create_file_pages(const char *path, unsigned int npages,
			   uint64_t (*seed)(unsigned int k))
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	char *buf = malloc(page);
	int fd;

	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || !buf) {
		pr_perror("create %s", path);
		goto err;
	}
	for (unsigned int k = 0; k < npages; k++) {
		datafill(buf, page, seed(k));
		if (pwrite(fd, buf, page, (off_t)(k * page)) != (ssize_t)page) {
			pr_perror("write %s", path);
			goto err;
		}
	}
	free(buf);
	return fd;
err:
	if (fd >= 0)
		close(fd);
	free(buf);
	return -1;
}
