package kmod

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostinfo"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/modinfo"
	"golang.org/x/sys/unix"
)

// Load plans as Plan does, then loads the modules in order through k.
// Each file is opened once; a tree module's vermagic, name and signature
// are checked again on that descriptor, so the bytes checked are the bytes
// the kernel gets. In-tree modules compressed with xz, zstd or gzip are
// passed with MODULE_INIT_COMPRESSED_FILE.
//
// It returns every step done, skipped ones included; a module the kernel
// reports as already loaded (EEXIST) counts as done, with Skipped set. On
// error it returns the steps done before, whose modules stay loaded (the
// caller decides), and an error naming the module and path: Plan's errors;
// the file cannot be opened, is not a regular file, or fails the checks
// again; or the kernel refuses it, which is explained (invalid format,
// ErrUnsigned under Secure Boot/lockdown, no GPU the module can drive, an
// unknown symbol naming the dependency that is not loaded, busy, no
// support for compressed modules) and wraps the unix.Errno.
func Load(k Syscalls, req Request) ([]Step, error) {
	p, err := plan(req)
	if err != nil {
		return nil, err
	}
	var done []Step
	for _, n := range p.nodes {
		step, err := p.load(k, n)
		if err != nil {
			return done, err
		}
		done = append(done, step)
	}
	return done, nil
}

// load loads the module of n unless it is skipped. It returns the step
// done, or the error Load describes.
func (p *planner) load(k Syscalls, n *node) (Step, error) {
	step := n.step
	if step.Skipped != "" {
		return step, nil
	}
	f, size, err := openModule(step.Path, !step.InTree)
	if err != nil {
		return Step{}, fmt.Errorf("load module %s: %w", step.Name, err)
	}
	defer f.Close()
	flags, err := p.verify(step, f, size)
	if err != nil {
		return Step{}, err
	}
	start := hostinfo.Monotonic()
	err = k.FinitModule(f, step.Params, flags)
	switch {
	case errors.Is(err, unix.EEXIST):
		step.Skipped = "already loaded"
		return step, nil
	case err != nil:
		return Step{}, p.explain(n, flags, err, p.kernelSaid(step.Name, start))
	}
	return step, nil
}

// verify checks the module open as f, size bytes, just before it is
// loaded. A tree module must be a plain .ko that passes check; an in-tree
// one is the host's own and is only inspected for compression. It returns
// the finit_module flags, or an error naming the module and path.
func (p *planner) verify(step Step, f *os.File, size int64) (int, error) {
	if step.InTree {
		flags, err := compressionFlags(f)
		if err != nil {
			return 0, fmt.Errorf("load module %s: %s: %w", step.Name, step.Path, err)
		}
		return flags, nil
	}
	info, err := modinfo.Parse(f, size)
	if err != nil {
		return 0, fmt.Errorf("check module %s: %s: %w", step.Name, step.Path, err)
	}
	if p.sigs == nil {
		p.sigs = map[string]*modinfo.Signature{}
	}
	p.sigs[step.Name] = info.Signature
	return 0, p.check(step.Name, step.Path, info)
}

// openModule opens the module file at path for finit_module: read-only,
// close-on-exec, and, when nofollow is set, refusing a symlink as the last
// component. It opens without blocking, so that a FIFO put in the file's
// place cannot hang the daemon, then makes the descriptor blocking again.
// It returns the file and its size, or an error naming path when it cannot
// be opened or is not a regular file.
func openModule(path string, nofollow bool) (*os.File, int64, error) {
	flags := unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOCTTY | unix.O_NONBLOCK
	if nofollow {
		flags |= unix.O_NOFOLLOW
	}
	fd, err := unix.Open(path, flags, 0)
	if err != nil {
		return nil, 0, fmt.Errorf("open %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, 0, fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, 0, fmt.Errorf("open %s: not a regular file (mode %#o)", path, st.Mode)
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, 0, fmt.Errorf("open %s: %w", path, err)
	}
	return os.NewFile(uintptr(fd), path), st.Size, nil
}

// Magic numbers of the compressed formats the kernel can decompress.
var compressionMagics = []string{
	"\xfd7zXZ\x00",     // xz
	"\x28\xb5\x2f\xfd", // zstd
	"\x1f\x8b",         // gzip
}

// compressionFlags returns MODULE_INIT_COMPRESSED_FILE when the content of
// f starts like an xz, zstd or gzip stream, as the kernel detects it, and 0
// otherwise. It returns an error when f cannot be read.
func compressionFlags(f *os.File) (int, error) {
	head := make([]byte, 6)
	n, err := f.ReadAt(head, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return 0, fmt.Errorf("read header: %w", err)
	}
	for _, magic := range compressionMagics {
		if strings.HasPrefix(string(head[:n]), magic) {
			return compressedFile, nil
		}
	}
	return 0, nil
}
