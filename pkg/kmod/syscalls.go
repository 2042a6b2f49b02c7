package kmod

import (
	"os"

	"golang.org/x/sys/unix"
)

// Syscalls are the module system calls kmod makes; LinuxSyscalls makes
// them, tests fake them (kmodtest.Syscalls).
type Syscalls interface {
	// FinitModule loads the module open as f with the given parameters
	// ("k=v k2=v2") and MODULE_INIT_* flags, as finit_module(2) does. It
	// returns nil or the syscall's unix.Errno.
	FinitModule(f *os.File, params string, flags int) error
	// DeleteModule unloads the module name with the given O_* flags, as
	// delete_module(2) does. It returns nil or the syscall's unix.Errno.
	DeleteModule(name string, flags int) error
}

// LinuxSyscalls makes the system calls. They need CAP_SYS_MODULE.
type LinuxSyscalls struct{}

// FinitModule calls finit_module(2) on f's descriptor. It returns nil or
// the unix.Errno the kernel returned.
func (LinuxSyscalls) FinitModule(f *os.File, params string, flags int) error {
	return unix.FinitModule(int(f.Fd()), params, flags)
}

// DeleteModule calls delete_module(2). It returns nil or the unix.Errno the
// kernel returned.
func (LinuxSyscalls) DeleteModule(name string, flags int) error {
	return unix.DeleteModule(name, flags)
}

// compressedFile asks finit_module to decompress the module itself
// (MODULE_INIT_COMPRESSED_FILE, Linux 5.17, CONFIG_MODULE_DECOMPRESS).
const compressedFile = unix.MODULE_INIT_COMPRESSED_FILE
