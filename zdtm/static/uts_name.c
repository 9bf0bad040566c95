/*
 * uts_name: the test sets the hostname and domainname of its UTS namespace. After restore
 * uname() reports both. Only for the ns and uns flavours, where the UTS namespace is the
 * test's own; in the initial UTS namespace the test skips itself instead of renaming the
 * host.
 */
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "zdtmtst.h"

#define HOST "zdtm-uts-name"
#define DOMAIN "zdtm.example"

/* The kernel's fixed inode number of the initial UTS namespace (PROC_UTS_INIT_INO). */
#define UTS_INIT_INO 0xEFFFFFFEUL

int main(int argc, char **argv)
{
	struct utsname u;
	struct stat st;

	test_init(argc, argv);

	if (stat("/proc/self/ns/uts", &st)) {
		pr_perror("stat /proc/self/ns/uts");
		return 1;
	}
	if (st.st_ino == UTS_INIT_INO)
		return skip("in the initial UTS namespace: the test would rename the host");
	if (sethostname(HOST, strlen(HOST)) || setdomainname(DOMAIN, strlen(DOMAIN))) {
		pr_perror("sethostname/setdomainname");
		return 1;
	}

	test_daemon();
	test_waitsig();

	if (uname(&u))
		return fail_perror("uname");
	if (strcmp(u.nodename, HOST))
		fail("hostname is %s, expected %s", u.nodename, HOST);
	if (strcmp(u.domainname, DOMAIN))
		fail("domainname is %s, expected %s", u.domainname, DOMAIN);
	return pass();
}
