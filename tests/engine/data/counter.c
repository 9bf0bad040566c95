/* tests/engine/test_dump_kill.py: counts in private memory and a shared file. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>
static volatile uint64_t mine;  /* private: its value at the dump is in the image */
int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDWR | O_CREAT, 0600);
    if (fd < 0 || ftruncate(fd, 4096))
        return 1;
    volatile uint64_t *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (shared == MAP_FAILED)
        return 1;
    printf("%p\n", (void *)&mine);
    fflush(stdout);
    for (;;) {
        mine++;
        *shared = mine;  /* the file: what the process did, the image: what was dumped */
    }
}
