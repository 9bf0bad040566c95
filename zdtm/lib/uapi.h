/*
 * uapi.h - kernel uapi newer than the installed 6.1 headers, written from the kernel's
 * documentation (Documentation/admin-guide/mm/pagemap.rst, userfaultfd.rst). Every block is
 * guarded so that newer installed headers win.
 */
#ifndef ZDTM_UAPI_H
#define ZDTM_UAPI_H

#include <linux/fs.h>
#include <linux/ioctl.h>
#include <linux/types.h>
#include <linux/userfaultfd.h>
#include <sys/mman.h>

/* PAGEMAP_SCAN ioctl on /proc/PID/pagemap (Linux 6.7). */
#ifndef PAGEMAP_SCAN

/* Page categories: masks in struct pm_scan_arg, reported in page_region.categories. */
#define PAGE_IS_WPALLOWED (1 << 0)
#define PAGE_IS_WRITTEN (1 << 1)
#define PAGE_IS_FILE (1 << 2)
#define PAGE_IS_PRESENT (1 << 3)
#define PAGE_IS_SWAPPED (1 << 4)
#define PAGE_IS_PFNZERO (1 << 5)
#define PAGE_IS_HUGE (1 << 6)
#define PAGE_IS_SOFT_DIRTY (1 << 7)

/* One run of pages [start, end) sharing the categories. */
struct page_region {
	__u64 start;
	__u64 end;
	__u64 categories;
};

/* Operations (pm_scan_arg.flags). */
#define PM_SCAN_WP_MATCHING (1 << 0)   /* write-protect the matched pages */
#define PM_SCAN_CHECK_WPASYNC (1 << 1) /* fail on pages without async write-protect */

struct pm_scan_arg {
	__u64 size;		   /* sizeof(struct pm_scan_arg) */
	__u64 flags;
	__u64 start;		   /* range to walk */
	__u64 end;
	__u64 walk_end;		   /* out: where the walk stopped */
	__u64 vec;		   /* struct page_region array */
	__u64 vec_len;
	__u64 max_pages;	   /* 0: no limit */
	__u64 category_inverted;
	__u64 category_mask;	   /* pages must have all of these */
	__u64 category_anyof_mask; /* ... and at least one of these */
	__u64 return_mask;	   /* categories reported in page_region */
};

#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#endif /* PAGEMAP_SCAN */

/* Guard regions (Linux 6.14) are reported as their own category. */
#ifndef PAGE_IS_GUARD
#define PAGE_IS_GUARD (1 << 8)
#endif

/* userfaultfd features after 6.1. */
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13) /* WP also marks not-yet-populated ptes */
#endif
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15) /* the kernel resolves WP faults itself */
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1 << 16)
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1 /* userfaultfd(2) flag: only user-mode faults */
#endif

/* madvise advice after 6.1. */
#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif
#ifndef MADV_GUARD_REMOVE
#define MADV_GUARD_REMOVE 103
#endif

#endif /* ZDTM_UAPI_H */
