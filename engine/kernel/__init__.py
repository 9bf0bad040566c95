"""ctypes layer over the kernel interface: constants, structs, raw syscalls, ptrace, injection."""
