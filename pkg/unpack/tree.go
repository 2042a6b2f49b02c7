package unpack

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Default limits, used where Limits leaves a field at zero.
const (
	DefaultMaxBytes   int64 = 8 << 30 // 8 GiB of regular-file data
	DefaultMaxEntries       = 200000  // tar entries
)

// copyBufferSize is the size of the pooled buffers file data is copied
// through; no file is ever held in memory whole. Decompress hands over
// at most outputBuffer bytes per Read, so a larger buffer would not mean
// fewer writes.
const copyBufferSize = outputBuffer

// Limits bound what an image may write, so a hostile one cannot fill the disk.
//
// MaxEntries also bounds what is not file data: every entry costs at most an
// inode and a block (a directory, a symlink target of up to 4 KiB), so the
// metadata of a tree stays under about MaxEntries × 4 KiB (800 MiB at the
// default). Directories created because an entry's parents were missing
// count as entries too, so that one entry with a deep name cannot create
// thousands of directories for free.
type Limits struct {
	MaxBytes   int64 // total regular-file bytes across all layers; 0 = DefaultMaxBytes (8 GiB)
	MaxEntries int   // total tar entries across all layers, and implied directories; 0 = DefaultMaxEntries (200000)
}

// withDefaults returns l with zero fields replaced by the defaults.
func (l Limits) withDefaults() Limits {
	if l.MaxBytes == 0 {
		l.MaxBytes = DefaultMaxBytes
	}
	if l.MaxEntries == 0 {
		l.MaxEntries = DefaultMaxEntries
	}
	return l
}

// Mode says how Apply treats layers relative to each other.
type Mode int

const (
	// Ordered applies layers one after another in image order. Whiteouts
	// (.wh.<name>) and opaque directories (.wh..wh..opq) are honoured as
	// the OCI image spec describes, and later layers may replace earlier
	// files and symlinks.
	Ordered Mode = iota
	// Disjoint applies layers concurrently. Each non-directory path may be
	// written by only one layer, hard links must stay within their layer,
	// and whiteouts are refused. Images made by publish are disjoint, so a
	// violation is hostile input.
	Disjoint
)

// String returns "ordered" or "disjoint", or "Mode(n)" for other values.
func (m Mode) String() string {
	switch m {
	case Ordered:
		return "ordered"
	case Disjoint:
		return "disjoint"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Stats reports what a Tree has written so far.
type Stats struct {
	Entries  int      // tar entries read, of every type, and implied directories; counted against Limits.MaxEntries
	Files    int      // regular files created (hard links not counted)
	Bytes    int64    // regular-file bytes admitted, counted against Limits.MaxBytes
	Stripped []string // paths whose setuid/setgid/sticky bits were removed, sorted
}

// ErrRefused is matched (with errors.Is) by every error that refuses image
// content: a hostile or malformed entry, an exceeded limit, a broken
// Disjoint promise. Errors that do not match it come from the host (a full
// disk, an I/O error) or from a stream that cannot be read as tar.
var ErrRefused = errors.New("image content refused")

// refusal is the error for refused image content; it matches ErrRefused
// without repeating its text in every message.
type refusal struct{ msg string }

func (r *refusal) Error() string        { return r.msg }
func (r *refusal) Is(target error) bool { return target == ErrRefused }

// refuse returns a refusal with a formatted message.
func refuse(format string, args ...any) error {
	return &refusal{msg: fmt.Sprintf(format, args...)}
}

// EntryError is the error Apply returns for an entry it refused or could
// not write. Its message reads
// `unpack layer 2: entry "lib64/../../etc/passwd": path escapes the tree`.
type EntryError struct {
	Layer int    // layer index given to Apply
	Entry string // the entry's name as the archive spells it
	Err   error  // what went wrong
}

// Error returns the message, naming the layer and the entry; a name of
// more than 200 bytes is shortened to its start and its length, so that a
// hostile one cannot flood the journal.
func (e *EntryError) Error() string {
	name := strconv.Quote(e.Entry)
	if len(e.Entry) > maxShownName {
		name = fmt.Sprintf("%q... (%d bytes)", e.Entry[:maxShownName], len(e.Entry))
	}
	return fmt.Sprintf("unpack layer %d: entry %s: %v", e.Layer, name, e.Err)
}

// maxShownName is how much of an entry name an error shows.
const maxShownName = 200

// Unwrap returns e.Err.
func (e *EntryError) Unwrap() error { return e.Err }

// Tree is a directory being filled from image layers. It is safe for
// concurrent use by Apply calls in Disjoint mode. An Ordered Apply waits for
// every other Apply to finish and holds the others off while it runs, since
// its layer must see the layers before it whole.
type Tree struct {
	root    *os.Root
	limits  Limits
	buffers sync.Pool // *[]byte of copyBufferSize

	// applying is held for reading by each Disjoint Apply and for writing
	// by each Ordered one.
	applying sync.RWMutex

	// mu guards everything below, and is held across every change to the
	// directory structure (mkdir, create, symlink, link, remove), so that
	// the record and the disk change together. File data is copied
	// without it.
	mu      sync.Mutex
	top     *node  // the tree root, a directory
	lastGen uint64 // generation of the latest Apply call
	stats   Stats

	// subdir, when set, is the directory of the image that becomes the
	// tree; see NewSubtree.
	subdir string
}

// NewTree returns a Tree writing into root, an *os.Root opened on an empty
// staging directory. All writes go through root, so nothing can escape the
// directory even through symlink races. Zero fields of limits take the
// defaults. The caller keeps ownership of root and closes it after the last
// Apply.
func NewTree(root *os.Root, limits Limits) *Tree {
	t := &Tree{
		root:   root,
		limits: limits.withDefaults(),
		top:    &node{kind: kindDir},
	}
	t.buffers.New = func() any {
		b := make([]byte, copyBufferSize)
		return &b
	}
	return t
}

// NewSubtree is NewTree for images whose tree is a directory inside them,
// as the original CoreOS installer's images kept it under
// opt/nvidia/<driver>/<os-version>. Only entries below subdir (a clean
// relative path) are written, relative to it; everything else is counted
// against the limits and skipped. Every rule is checked against the
// subtree: a symlink that climbs out of subdir is refused, since after
// installation it would point outside the tree. Hard links must name a file
// below subdir.
func NewSubtree(root *os.Root, limits Limits, subdir string) *Tree {
	t := NewTree(root, limits)
	t.subdir = subdir
	return t
}

// within maps an image path to a tree path: unchanged without a subdir;
// relative to it below it ("." for subdir itself); ok is false outside.
func (t *Tree) within(name string) (string, bool) {
	switch {
	case t.subdir == "":
		return name, true
	case name == t.subdir:
		return ".", true
	case strings.HasPrefix(name, t.subdir+"/"):
		return name[len(t.subdir)+1:], true
	}
	return "", false
}

// Stats returns what was written so far. Its Stripped slice is a copy.
func (t *Tree) Stats() Stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.stats
	s.Stripped = slices.Clone(t.stats.Stripped)
	slices.Sort(s.Stripped)
	return s
}

// Apply reads one uncompressed tar stream, layer index layer (used in
// messages), and writes it into the tree according to mode.
//
// It returns nil once the archive's end (or the end of r) is reached; data
// after the end-of-archive marker is not read, so a caller that checks a
// digest over r must drain it. It returns an *EntryError naming the layer
// and the entry for any entry it refuses (matching ErrRefused) or cannot
// write; an error naming the layer and the last good entry when a header
// cannot be read (a truncated stream gives io.ErrUnexpectedEOF); ctx's
// error, so wrapped, when ctx is done before an entry or during a file's
// data; and an error for an unknown mode. After any error the tree is
// incomplete and the caller discards the whole staging directory.
func (t *Tree) Apply(ctx context.Context, layer int, r io.Reader, mode Mode) error {
	switch mode {
	case Ordered:
		t.applying.Lock()
		defer t.applying.Unlock()
	case Disjoint:
		t.applying.RLock()
		defer t.applying.RUnlock()
	default:
		return fmt.Errorf("unpack layer %d: unknown mode %v", layer, mode)
	}
	a := &applier{t: t, ctx: ctx, layer: layer, gen: t.nextGen(), mode: mode}
	tr := tar.NewReader(r)
	last := ""
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("unpack layer %d: stop after entry %q: %w", layer, last, err)
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("unpack layer %d: read tar header after entry %q: %w", layer, last, err)
		}
		if err := a.entry(hdr, tr); err != nil {
			return &EntryError{Layer: layer, Entry: hdr.Name, Err: err}
		}
		last = hdr.Name
	}
}

// nextGen returns a new generation number for an Apply call. Generations
// tell which call wrote a path: Disjoint mode keeps layers apart by them,
// and whiteouts remove only what earlier calls wrote.
func (t *Tree) nextGen() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lastGen++
	return t.lastGen
}

// countEntry admits one more entry. It returns a refusal once the tree has
// seen Limits.MaxEntries entries.
func (t *Tree) countEntry() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.countEntryLocked()
}

// countEntryLocked is countEntry for callers holding t.mu.
func (t *Tree) countEntryLocked() error {
	if t.stats.Entries >= t.limits.MaxEntries {
		return refuse("exceeds the limit of %d entries", t.limits.MaxEntries)
	}
	t.stats.Entries++
	return nil
}

// reserveBytes admits size more bytes of file data, before any is written,
// so a header claiming a terabyte fails at the header. It returns a
// refusal when the tree's total would pass Limits.MaxBytes.
func (t *Tree) reserveBytes(size int64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	// Written as a subtraction so that a huge size cannot overflow.
	if size > t.limits.MaxBytes-t.stats.Bytes {
		return refuse("file of %d bytes exceeds the limit of %d bytes (%d already written)", size, t.limits.MaxBytes, t.stats.Bytes)
	}
	t.stats.Bytes += size
	return nil
}

// noteStripped records that p lost its setuid/setgid/sticky bits.
func (t *Tree) noteStripped(p string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.stats.Stripped = append(t.stats.Stripped, p)
}

// noteFile counts one regular file created.
func (t *Tree) noteFile() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.stats.Files++
}
