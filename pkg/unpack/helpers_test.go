package unpack_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/unpack"
)

// testMTime is the modification time test entries carry.
var testMTime = time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)

// ent is one tar entry to write: a header, and the body of a regular file.
type ent struct {
	hdr  tar.Header
	body string
	// headerOnly writes the header and stops the stream there, for
	// headers whose data never comes (a size of a terabyte).
	headerOnly bool
}

func dirEnt(name string, mode int64) ent {
	return ent{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, ModTime: testMTime}}
}

func fileEnt(name, body string, mode int64) ent {
	return ent{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(body)), ModTime: testMTime}, body: body}
}

func symlinkEnt(name, target string) ent {
	return ent{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777, ModTime: testMTime}}
}

func hardlinkEnt(name, target string) ent {
	return ent{hdr: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, Mode: 0o644, ModTime: testMTime}}
}

func deviceEnt(name string, typ byte) ent {
	return ent{hdr: tar.Header{Typeflag: typ, Name: name, Mode: 0o600, Devmajor: 1, Devminor: 3, ModTime: testMTime}}
}

// layerTar returns the tar stream of ents, with its end-of-archive marker
// unless an entry is headerOnly.
func layerTar(tb testing.TB, ents ...ent) []byte {
	tb.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		hdr := e.hdr
		if err := tw.WriteHeader(&hdr); err != nil {
			tb.Fatalf("write header %q: %v", hdr.Name, err)
		}
		if e.headerOnly {
			return buf.Bytes()
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			tb.Fatalf("write body %q: %v", hdr.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		tb.Fatalf("close tar: %v", err)
	}
	return buf.Bytes()
}

// setTypeflag returns raw with the type flag of the first header replaced
// by typ and its checksum recomputed, for types tar.Writer will not write
// (the old TypeRegA).
func setTypeflag(tb testing.TB, raw []byte, typ byte) []byte {
	tb.Helper()
	out := bytes.Clone(raw)
	blk := out[:512]
	blk[156] = typ
	copy(blk[148:156], "        ")
	sum := 0
	for _, c := range blk {
		sum += int(c)
	}
	copy(blk[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return out
}

// fixture is a staging directory inside a parent that also holds things
// an escape would touch: a sibling "outside" directory with a canary, and
// a "previous" tree as the store keeps one.
type fixture struct {
	parent  string
	staging string
	root    *os.Root
}

const (
	canaryText   = "canary: must never change\n"
	previousText = "previous tree: must never change\n"
)

// newFixture builds the parent directory and opens the empty staging
// directory as an os.Root.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	parent := t.TempDir()
	f := &fixture{parent: parent, staging: filepath.Join(parent, "staging")}
	for _, d := range []string{"outside", "previous/lib64", "staging"} {
		if err := os.MkdirAll(filepath.Join(parent, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(parent, "outside", "canary"), canaryText, 0o644)
	writeFile(t, filepath.Join(parent, "previous", "lib64", "libnvidia-ml.so.1"), previousText, 0o755)
	if err := os.Symlink("libnvidia-ml.so.1", filepath.Join(parent, "previous", "lib64", "libnvidia-ml.so")); err != nil {
		t.Fatal(err)
	}
	root, err := os.OpenRoot(f.staging)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	f.root = root
	return f
}

func writeFile(t *testing.T, p, body string, mode fs.FileMode) {
	t.Helper()
	if err := os.WriteFile(p, []byte(body), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

// apply applies layers one after another with mode and returns the first
// error.
func (f *fixture) apply(tree *unpack.Tree, mode unpack.Mode, layers ...[]byte) error {
	for i, l := range layers {
		if err := tree.Apply(context.Background(), i, bytes.NewReader(l), mode); err != nil {
			return err
		}
	}
	return nil
}

// snapshot describes every path under dir (the staging directory shown
// only as itself, not walked) by type, size, mode, link target and a hash
// of the content, keyed by path relative to dir.
func snapshot(t *testing.T, dir, skip string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		desc := fi.Mode().String()
		switch {
		case fi.IsDir():
			// A directory's size follows its entries on some file
			// systems; its entries are compared one by one anyway.
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			desc += " -> " + target
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" %d sha256:%x", fi.Size(), sha256.Sum256(b))
		}
		out[rel] = desc
		if p == skip {
			return filepath.SkipDir
		}
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot %s: %v", dir, err)
	}
	return out
}

// hostFiles are host paths hostile cases aim at; their metadata must not
// change either.
var hostFiles = []string{"/etc/passwd", "/etc/shadow", "/etc/hostname"}

// hostSnapshot describes the host files of hostFiles that exist.
func hostSnapshot() map[string]string {
	out := map[string]string{}
	for _, p := range hostFiles {
		fi, err := os.Lstat(p)
		if err != nil {
			out[p] = err.Error()
			continue
		}
		out[p] = fi.Mode().String() + " " + strconv.FormatInt(fi.Size(), 10) + " " + fi.ModTime().String()
	}
	return out
}

// diffSnapshots returns a line for every path that differs between a and b.
func diffSnapshots(a, b map[string]string) []string {
	var diffs []string
	for k, v := range a {
		if w, ok := b[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: removed (was %s)", k, v))
		} else if v != w {
			diffs = append(diffs, fmt.Sprintf("%s: %s became %s", k, v, w))
		}
	}
	for k, w := range b {
		if _, ok := a[k]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: created (%s)", k, w))
		}
	}
	return diffs
}

// readTree describes the staging tree: for every path, its type and
// permissions, and a file's content or a link's target.
func readTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch {
		case fi.IsDir():
			out[filepath.ToSlash(rel)] = fmt.Sprintf("dir %o", fi.Mode().Perm())
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			out[filepath.ToSlash(rel)] = "-> " + target
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			out[filepath.ToSlash(rel)] = fmt.Sprintf("file %o %q", fi.Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky), b)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("read tree %s: %v", dir, err)
	}
	return out
}

// wantTree fails t unless the staging tree is exactly want.
func wantTree(t *testing.T, dir string, want map[string]string) {
	t.Helper()
	got := readTree(t, dir)
	for _, d := range diffSnapshots(want, got) {
		t.Errorf("tree: %s", d)
	}
}
