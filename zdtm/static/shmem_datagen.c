/* shmem_datagen: anonymous shared memory of two tasks; see shmem_datagen.h. */
#include "shmem_datagen.h"

int main(int argc, char **argv)
{
	return shmem_test(argc, argv, true);
}
