/* shmem_datagen_single: anonymous shared memory of one task; see shmem_datagen.h. */
#include "shmem_datagen.h"

int main(int argc, char **argv)
{
	return shmem_test(argc, argv, false);
}
