/*
 * procself.c - the test's own memory map: fresh mappings, and what /proc/self/smaps and
 * mincore say about them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "zdtmtst.h"

/* Parse a smaps header line "start-end perms offset dev inode [path]"; 0 when it is one. */
static int parse_header(const char *line, struct vma_info *vi)
{
	int n = 0;

	if (sscanf(line, "%lx-%lx %4s %llx %*s %*u %n", &vi->start, &vi->end, vi->perms,
		   &vi->pgoff, &n) < 4 || !n)
		return -1;
	snprintf(vi->path, sizeof(vi->path), "%s", line + n);
	vi->path[strcspn(vi->path, "\n")] = '\0';
	vi->vmflags[0] = '\0';
	return 0;
}

int vma_find(const void *addr, struct vma_info *vi)
{
	unsigned long a = (unsigned long)addr;
	bool found = false;
	char *line = NULL;
	size_t cap = 0;
	FILE *f;

	f = fopen("/proc/self/smaps", "re");
	if (!f)
		return -1;
	while (getline(&line, &cap, f) > 0) {
		struct vma_info cur;

		if (!found) {
			if (!parse_header(line, &cur) && cur.start <= a && a < cur.end) {
				*vi = cur;
				found = true;
			}
		} else if (!strncmp(line, "VmFlags:", 8)) {
			snprintf(vi->vmflags, sizeof(vi->vmflags), "%s", line + 8 + strspn(line + 8, " "));
			vi->vmflags[strcspn(vi->vmflags, "\n")] = '\0';
			break;
		}
	}
	free(line);
	fclose(f);
	if (!found) {
		errno = ENOENT;
		return -1;
	}
	return 0;
}

bool vma_has_flag(const struct vma_info *vi, const char *flag)
{
	size_t len = strlen(flag);

	for (const char *p = vi->vmflags; *p; p += strspn(p, " ")) {
		size_t w = strcspn(p, " ");

		if (w == len && !strncmp(p, flag, len))
			return true;
		p += w;
	}
	return false;
}

bool range_unmapped(const void *addr, size_t len)
{
	long page = sysconf(_SC_PAGESIZE);
	unsigned char vec;

	for (size_t off = 0; off < len; off += (size_t)page)
		if (mincore((char *)addr + off, (size_t)page, &vec) == 0 || errno != ENOMEM)
			return false;
	return true;
}

void *test_map_anon(size_t len, bool shared)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		pr_perror("mmap %zu bytes", len);
		return NULL;
	}
	return p;
}

int test_vma_check(const char *file, int line, const void *addr, size_t len, const char *perms)
{
	unsigned long a = (unsigned long)addr, end = a + len;
	struct vma_info vi;

	/*
	 * Only the range itself is checked, not where its VMAs begin and end: the kernel merges
	 * an anonymous range with a neighbour of the same permissions whenever their anon_vmas
	 * allow it (a restore maps both afresh), and no process can tell the difference.
	 */
	for (; a < end; a = vi.end) {
		if (vma_find((void *)a, &vi))
			return test_fail(file, line, errno, "no VMA at %#lx in %p-%#lx", a, addr, end), -1;
		if (strcmp(vi.perms, perms))
			return test_fail(file, line, 0, "VMA %lx-%lx %s in %p-%#lx, expected %s",
					 vi.start, vi.end, vi.perms, addr, end, perms), 1;
	}
	return 0;
}

void *test_map_data(size_t len, uint64_t seed, int prot)
{
	void *p = test_map_anon(len, false);

	if (!p)
		return NULL;
	datafill(p, len, seed);
	if (mprotect(p, len, prot)) {
		pr_perror("mprotect(%#x)", prot);
		munmap(p, len);
		return NULL;
	}
	return p;
}

void *test_map_fd(int fd, size_t len, int flags)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, fd, 0);

	if (p == MAP_FAILED) {
		pr_perror("mmap fd %d", fd);
		return NULL;
	}
	return p;
}
