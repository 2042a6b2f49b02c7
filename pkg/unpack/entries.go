package unpack

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// impliedDirMode is the mode of a directory created because an entry below
// it came first.
const impliedDirMode fs.FileMode = 0o755

// ownerDirBits are always set on directories, so that the daemon can keep
// writing into a directory an image declared read-only (0o555) whatever
// its capabilities, and later layers can too. Directory modes are applied
// when the directory entry is read, not deferred to a final pass: Apply
// has no final pass, and in Disjoint mode another layer may still be
// writing below.
const ownerDirBits fs.FileMode = 0o700

// applier applies one layer; it holds what one Apply call knows.
type applier struct {
	t     *Tree
	ctx   context.Context
	layer int
	gen   uint64
	mode  Mode
}

// entry applies one tar entry, whose data (for a regular file) is read from
// data. It returns a refusal for content this package does not accept,
// and an error for anything the host fails to do.
func (a *applier) entry(hdr *tar.Header, data io.Reader) error {
	if err := a.t.countEntry(); err != nil {
		return err
	}
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		// A PAX global header carries defaults for later headers, which
		// archive/tar does not apply; it names no file.
		return nil
	}
	if isSparse(hdr) {
		// archive/tar would expand the holes for us, but a driver tree
		// has no sparse files and the format is one more parser to trust.
		return refuse("sparse files are not allowed")
	}
	name, err := cleanName(hdr.Name, hdr.Typeflag == tar.TypeDir)
	if err != nil {
		return err
	}
	name, ok := a.t.within(name)
	if !ok {
		return nil // outside the image's subdir: not part of the tree
	}
	linkname := hdr.Linkname
	if hdr.Typeflag == tar.TypeLink && a.t.subdir != "" {
		ln, err := cleanName(linkname, false)
		if err != nil {
			return err
		}
		if linkname, ok = a.t.within(ln); !ok {
			return refuse("hard link to %q, outside %s", hdr.Linkname, a.t.subdir)
		}
	}
	wo, target, err := classifyWhiteout(name)
	if err != nil {
		return err
	}
	if wo != notWhiteout {
		// By name, whatever the entry's type: whiteout files are never
		// created in the tree.
		return a.whiteout(wo, name, target)
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		return a.dir(name, hdr)
	case tar.TypeReg: // archive/tar reports the old TypeRegA as TypeReg
		return a.file(name, hdr, data)
	case tar.TypeSymlink:
		return a.symlink(name, hdr.Linkname)
	case tar.TypeLink:
		return a.hardlink(name, linkname)
	}
	return refuse("%s entries are not allowed; a tree holds directories, regular files, symlinks and hard links", typeName(hdr.Typeflag))
}

// isSparse reports whether hdr describes a GNU sparse file, old style or
// PAX style.
func isSparse(hdr *tar.Header) bool {
	if hdr.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

// typeName names a tar type flag for messages.
func typeName(flag byte) string {
	switch flag {
	case tar.TypeChar:
		return "character device"
	case tar.TypeBlock:
		return "block device"
	case tar.TypeFifo:
		return "fifo"
	case tar.TypeCont:
		return "contiguous file"
	}
	return fmt.Sprintf("type %q", flag)
}

// permissions returns the permission bits of a header mode without
// setuid, setgid and sticky: a driver tree never needs them, and a
// setuid-root binary planted by a hostile image would be a privilege
// escalation on the host. It records name in Stats.Stripped when it drops
// any. Ownership is never restored, so everything belongs to the daemon.
func (a *applier) permissions(name string, mode int64) fs.FileMode {
	if mode&0o7000 != 0 {
		a.t.noteStripped(name)
	}
	return fs.FileMode(mode & 0o777)
}

// dir applies a directory entry at the clean tree path name. The root's
// own entry ("./") changes nothing: the tree root's mode belongs to the
// store. An existing directory takes the entry's mode. It returns a
// refusal when the entry would replace a file or symlink in Disjoint mode,
// or redeclare a directory with another mode in Disjoint mode (layers
// applied concurrently must not race over a mode).
func (a *applier) dir(name string, hdr *tar.Header) error {
	if name == "." {
		return nil
	}
	perm := a.permissions(name, hdr.Mode) | ownerDirBits
	t := a.t
	t.mu.Lock()
	defer t.mu.Unlock()
	s, err := t.locate(name, a)
	if err != nil {
		return err
	}
	if old := s.existing(); old != nil && old.kind == kindDir {
		return a.redeclareDir(s, old, perm)
	}
	// Ordered mode: a later layer may turn a file or symlink into a
	// directory; the old one goes first.
	if err := a.vacate(s, kindDir); err != nil {
		return err
	}
	if err := t.mkdir(name, perm); err != nil {
		return err
	}
	n := newNode(kindDir, a.layer, a.gen)
	n.mode, n.declared = perm, true
	s.put(n)
	return nil
}

// redeclareDir applies a directory entry for the existing directory n at
// s: its mode becomes perm, and in Ordered mode the directory counts as
// written by this layer (a whiteout later in the layer keeps it). It
// returns a refusal in Disjoint mode when another entry declared another
// mode, and an error when the mode cannot be set.
func (a *applier) redeclareDir(s *spot, n *node, perm fs.FileMode) error {
	if a.mode == Disjoint && n.declared && n.mode != perm {
		return refuse("declares mode %#o but layer %d declared %#o; disjoint layers must agree on directories", uint32(perm), n.layer, uint32(n.mode))
	}
	if n.mode != perm {
		if err := a.t.root.Chmod(s.name, perm); err != nil {
			return fmt.Errorf("set directory permissions: %w", err)
		}
	}
	n.mode, n.declared = perm, true
	if a.mode == Ordered {
		n.gen, n.layer = a.gen, a.layer
		n.maxGen = max(n.maxGen, a.gen)
		s.put(n)
	}
	return nil
}

// implyDir creates the missing directory p (last component base) below
// s.parent because an entry below it came first, and records it as
// written by this layer. It counts as an entry against Limits.MaxEntries.
// Tree.mu must be held.
func (a *applier) implyDir(s *spot, p, base string) (*node, error) {
	if err := a.t.countEntryLocked(); err != nil {
		return nil, fmt.Errorf("create parent %q: %w", p, err)
	}
	if err := a.t.mkdir(p, impliedDirMode); err != nil {
		return nil, err
	}
	n := newNode(kindDir, a.layer, a.gen)
	n.mode = impliedDirMode
	(&spot{name: p, base: base, chain: s.chain, parent: s.parent}).put(n)
	return n, nil
}

// mkdir creates directory p with permissions perm, whatever the umask.
func (t *Tree) mkdir(p string, perm fs.FileMode) error {
	if err := t.root.Mkdir(p, ownerDirBits); err != nil {
		return fmt.Errorf("create directory: %w", err)
	}
	if err := t.root.Chmod(p, perm); err != nil {
		return fmt.Errorf("set directory permissions: %w", err)
	}
	return nil
}

// vacate makes room at s for a new entry of kind k (not a directory that
// exists already). It returns nil when s is free or, in Ordered mode, once
// the file or symlink there is removed. It returns a refusal when a
// directory is there (a directory never turns into anything else: its
// contents would be left without a home), and in Disjoint mode when
// anything is there, even from this same layer. Tree.mu must be held.
func (a *applier) vacate(s *spot, k kind) error {
	old := s.existing()
	switch {
	case old == nil:
		return nil
	case old.kind == kindDir:
		return refuse("changes the type of an existing directory to %s", k)
	case a.mode == Disjoint:
		return refuse("%s already written by layer %d; disjoint layers may write a path only once", old.kind, old.layer)
	}
	// Removed, never opened for writing: a hard link elsewhere to the
	// old file keeps the old content, and a symlink is never followed.
	if err := a.t.root.Remove(s.name); err != nil {
		return fmt.Errorf("remove the %s it replaces: %w", old.kind, err)
	}
	s.drop()
	return nil
}

// file applies a regular file entry at the clean tree path name, copying
// hdr.Size bytes from data. It returns a refusal for a negative size or
// one past Limits.MaxBytes (before anything is written), as vacate does
// for an occupied path, and an error when the file cannot be created,
// written, closed or timed, or when data ends early (io.ErrUnexpectedEOF)
// or ctx is done.
func (a *applier) file(name string, hdr *tar.Header, data io.Reader) error {
	if hdr.Size < 0 {
		return refuse("negative size %d", hdr.Size)
	}
	if err := a.t.reserveBytes(hdr.Size); err != nil {
		return err
	}
	perm := a.permissions(name, hdr.Mode)
	f, err := a.create(name)
	if err != nil {
		return err
	}
	if err := a.t.fill(a.ctx, f, data, hdr.Size, perm); err != nil {
		return err
	}
	if !hdr.ModTime.IsZero() {
		// The path is this layer's alone (Disjoint) or this call's
		// (Ordered), so it is still the file just written, not a link.
		if err := a.t.root.Chtimes(name, hdr.ModTime, hdr.ModTime); err != nil {
			return fmt.Errorf("set modification time: %w", err)
		}
	}
	a.t.noteFile()
	return nil
}

// create opens a new, empty file at the clean tree path name for writing,
// after vacate, and records it. It returns the errors locate and vacate
// return, and an error when the file cannot be created.
func (a *applier) create(name string) (*os.File, error) {
	t := a.t
	t.mu.Lock()
	defer t.mu.Unlock()
	s, err := t.locate(name, a)
	if err != nil {
		return nil, err
	}
	if err := a.vacate(s, kindFile); err != nil {
		return nil, err
	}
	// O_EXCL: the path was just vacated, so anything there now is not
	// ours; never truncate or write through an existing file or link.
	// O_NOFOLLOW says the same for a symlink. Mode 0o600 until the data
	// is in; fill sets the final permissions through the descriptor.
	f, err := t.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create file: %w", err)
	}
	s.put(newNode(kindFile, a.layer, a.gen))
	return f, nil
}

// fill copies size bytes from data into f through a pooled buffer, sets
// its permissions to perm and closes it, without fsync (the store syncs
// the file system once) but starting writeback of large files as it goes
// (see writeback). It returns an error when the copy, chmod or close
// fails (a close error on a written file is a write error), when data
// holds fewer bytes (io.ErrUnexpectedEOF) or when ctx is done.
func (t *Tree) fill(ctx context.Context, f *os.File, data io.Reader, size int64, perm fs.FileMode) error {
	bp := t.buffers.Get().(*[]byte)
	defer t.buffers.Put(bp)
	// The LimitReader bounds the copy by the size already admitted,
	// though archive/tar bounds it too.
	w := &writeback{f: f}
	n, err := io.CopyBuffer(w, ctxReader{ctx, io.LimitReader(data, size)}, *bp)
	if n >= writebackMin {
		w.start()
	}
	if err != nil {
		err = fmt.Errorf("copy file data: %w", err)
	} else if n != size {
		err = fmt.Errorf("copy file data: stream ends after %d of %d bytes: %w", n, size, io.ErrUnexpectedEOF)
	} else if err = f.Chmod(perm); err != nil {
		err = fmt.Errorf("set file permissions: %w", err)
	}
	if cerr := f.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("close file: %w", cerr)
	}
	return err
}

// writebackChunk is how many bytes of a file are written before the
// kernel is asked to start writing them to disk; files under
// writebackMin are left to the store's syncfs, which flushes many small
// files together.
const (
	writebackChunk = 8 << 20
	writebackMin   = 1 << 20
)

// writeback writes to a file, and every writebackChunk bytes asks the
// kernel to start writing them out (sync_file_range with
// SYNC_FILE_RANGE_WRITE, which does not wait for the disk), so that the
// disk works while the image is still being unpacked and the store's one
// syncfs before the commit finds little left to flush. It is a hint for
// speed, never for durability: errors starting writeback are ignored, and
// syncfs reports write errors. It is an io.Writer and nothing else, which
// also hides (*os.File).ReadFrom, which would copy through a buffer of
// its own.
type writeback struct {
	f                *os.File
	written, started int64
}

func (w *writeback) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.written += int64(n)
	if w.written-w.started >= writebackChunk {
		w.start()
	}
	return n, err
}

// start starts writeback of what was written since the last start.
func (w *writeback) start() {
	if w.written > w.started {
		_ = unix.SyncFileRange(int(w.f.Fd()), w.started, w.written-w.started, unix.SYNC_FILE_RANGE_WRITE)
		w.started = w.written
	}
}

// ctxReader reads from r until ctx is done, so that cancellation stops a
// large file's copy too, not only the walk between entries.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// symlink applies a symlink entry at the clean tree path name. It returns
// a refusal for a target checkSymlinkTarget refuses and as vacate does,
// and an error when the link cannot be created. Link times are not set:
// os.Root.Chtimes would follow the link.
func (a *applier) symlink(name, target string) error {
	if err := checkSymlinkTarget(name, target); err != nil {
		return err
	}
	t := a.t
	t.mu.Lock()
	defer t.mu.Unlock()
	s, err := t.locate(name, a)
	if err != nil {
		return err
	}
	if err := a.vacate(s, kindSymlink); err != nil {
		return err
	}
	if err := t.root.Symlink(target, name); err != nil {
		return fmt.Errorf("create symlink: %w", err)
	}
	s.put(newNode(kindSymlink, a.layer, a.gen))
	return nil
}

// hardlink applies a hard link entry at the clean tree path name to the
// entry named linkname. It returns a refusal when linkname is not a name
// cleanName accepts, names the entry itself, is reached through a symlink,
// or is not a regular file this tree already holds (never a directory, a
// symlink, a path still to come or anything outside); in Disjoint mode
// when the file came from another layer; and as vacate does. It returns an
// error when the link cannot be made.
func (a *applier) hardlink(name, linkname string) error {
	target, err := cleanName(linkname, false)
	if err != nil {
		return fmt.Errorf("hardlink target %q: %w", linkname, err)
	}
	if target == name {
		return refuse("hardlink to itself")
	}
	t := a.t
	t.mu.Lock()
	defer t.mu.Unlock()
	tn, _, err := t.lookup(target)
	switch {
	case err != nil:
		return fmt.Errorf("hardlink target %q: %w", linkname, err)
	case tn == nil:
		return refuse("hardlink target %q is not in the tree (yet)", linkname)
	case tn.kind != kindFile:
		return refuse("hardlink target %q is a %s, not a regular file", linkname, tn.kind)
	case a.mode == Disjoint && tn.gen != a.gen:
		return refuse("hardlink target %q was written by layer %d; disjoint layers may not link across layers", linkname, tn.layer)
	}
	s, err := t.locate(name, a)
	if err != nil {
		return err
	}
	if err := a.vacate(s, kindFile); err != nil {
		return err
	}
	// Belt and braces: the record says target is a regular file of this
	// tree; check that the disk agrees, so that a bug in the record
	// cannot become a link to something else. Beyond that, os.Root
	// refuses paths that leave the tree, and linkat without
	// AT_SYMLINK_FOLLOW would link a symlink itself, never its target.
	fi, err := t.root.Lstat(target)
	if err != nil {
		return fmt.Errorf("hardlink target %q: %w", linkname, err)
	}
	if !fi.Mode().IsRegular() {
		return refuse("hardlink target %q is a %v on disk, not a regular file", linkname, fi.Mode().Type())
	}
	if err := t.root.Link(target, name); err != nil {
		return fmt.Errorf("create hardlink: %w", err)
	}
	s.put(newNode(kindFile, a.layer, a.gen))
	return nil
}

// whiteout applies a whiteout entry at the clean tree path name: a plain
// one removes target, an opaque one the contents of name's directory, in
// each case only what earlier layers wrote (OCI image spec: a whiteout
// hides lower layers; entries of its own layer stay). A missing target is
// no error. It returns a refusal in Disjoint mode, when the path to the
// target or the opaque directory passes through a symlink or a file, and
// when the opaque directory is a symlink or a file itself; and an error
// when removing fails.
func (a *applier) whiteout(w whiteout, name, target string) error {
	if a.mode == Disjoint {
		return refuse("whiteouts are not allowed in disjoint layers")
	}
	t := a.t
	t.mu.Lock()
	defer t.mu.Unlock()
	if w == opaqueWhiteout {
		return a.opaque(path.Dir(name))
	}
	n, s, err := t.lookup(target)
	if err != nil || n == nil || n.minGen >= a.gen {
		return err // nothing there, or only what this layer wrote
	}
	if n.maxGen < a.gen {
		// RemoveAll removes a symlink at target, never what it points at.
		if err := t.root.RemoveAll(target); err != nil {
			return fmt.Errorf("remove %q: %w", target, err)
		}
		s.drop()
		return nil
	}
	if err := t.clearLower(n, target, a.gen, a.layer); err != nil {
		return fmt.Errorf("remove below %q: %w", target, err)
	}
	n.claim(a.gen, a.layer)
	return nil
}

// opaque applies an opaque marker in the directory at clean tree path dir
// ("." for the root). Tree.mu must be held.
func (a *applier) opaque(dir string) error {
	t := a.t
	n := t.top
	if dir != "." {
		var err error
		if n, _, err = t.lookup(dir); err != nil || n == nil {
			return err
		}
		if n.kind != kindDir {
			return refuse("opaque marker in %q, which is a %s", dir, n.kind)
		}
	}
	if n.minGen >= a.gen {
		return nil // cleared already, or nothing lower was ever there
	}
	if err := t.clearLower(n, dir, a.gen, a.layer); err != nil {
		return fmt.Errorf("clear %q: %w", dir, err)
	}
	n.claim(a.gen, a.layer)
	return nil
}
