package unpack_test

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/unpack"
)

// breakout is one hostile image: its layers, and what Apply must say.
type breakout struct {
	name   string
	mode   unpack.Mode
	limits unpack.Limits
	layers [][]byte
	// seed prepares the staging directory before the tree is made, for
	// cases about content the record of the tree does not know.
	seed func(t *testing.T, staging string)

	err   string // substring of the error; "" when Apply must succeed
	entry string // the entry the *unpack.EntryError must name; "" for a stream-level error
	layer int    // the layer the error must name
	// notRefused marks errors that are not refusals of content (a
	// truncated or unparseable stream).
	notRefused bool
	// check makes further assertions on the staging tree.
	check func(t *testing.T, f *fixture, tree *unpack.Tree)
}

// layers is shorthand for a list of layer streams.
func layers(ls ...[]byte) [][]byte { return ls }

func breakouts(t *testing.T) []breakout {
	tarOf := func(ents ...ent) []byte { return layerTar(t, ents...) }
	one := func(ents ...ent) [][]byte { return layers(tarOf(ents...)) }

	longEscape := "a/" + strings.Repeat("b/", 80) + strings.Repeat("../", 83) + "outside/evil"
	gnuLongLink := strings.Repeat("../", 40) + "etc/shadow"
	nulName := func() []byte {
		// tar.Writer refuses a NUL in a name, so write a marker and
		// swap the NUL into the PAX record, whose checksum-free data
		// archive/tar must then validate.
		e := fileEnt("aMARKERb", "x", 0o644)
		e.hdr.Format = tar.FormatPAX
		e.hdr.PAXRecords = map[string]string{"path": "aMARKERb"}
		return bytes.Replace(tarOf(e), []byte("path=aMARKERb"), []byte("path=a\x00\x00\x00\x00\x00\x00b"), 1)
	}
	truncated := func() []byte {
		full := tarOf(fileEnt("lib64/libbig.so", strings.Repeat("x", 4096), 0o644))
		return full[:512+1000] // the header and part of the data
	}
	paxSparse := func() []byte {
		body := append([]byte("1\n0\n4\n"), make([]byte, 506)...)
		body = append(body, "abcd"...)
		e := ent{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "sparse", Size: int64(len(body)), Mode: 0o644, Format: tar.FormatPAX,
			PAXRecords: map[string]string{"XYZ.sparse.major": "1", "XYZ.sparse.minor": "0", "XYZ.sparse.realsize": "10"}}, body: string(body)}
		return bytes.ReplaceAll(tarOf(e), []byte("XYZ.sparse."), []byte("GNU.sparse."))
	}
	huge := ent{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "lib64/huge", Mode: 0o644, Size: 1 << 40}, headerOnly: true}

	return []breakout{
		// Names.
		{name: "a name climbing out with ../ is refused",
			layers: one(fileEnt("../outside/canary", "pwned", 0o644)),
			err:    "path escapes the tree", entry: "../outside/canary"},
		{name: "an absolute name is refused",
			layers: one(fileEnt("/etc/passwd", "root::0:0::/:/bin/sh\n", 0o644)),
			err:    "absolute path", entry: "/etc/passwd"},
		{name: "a name that climbs after descending (a/../../x) is refused",
			layers: one(fileEnt("a/../../outside/x", "pwned", 0o644)),
			err:    "path escapes the tree", entry: "a/../../outside/x"},
		{name: "a name with .. that stays inside is refused all the same",
			layers: one(fileEnt("lib64/../bin/x", "x", 0o755)),
			err:    "path escapes the tree", entry: "lib64/../bin/x"},
		{name: "a directory climbing out is refused",
			layers: one(dirEnt("../outside/newdir/", 0o755)),
			err:    "path escapes the tree", entry: "../outside/newdir/"},
		{name: "a long PAX name climbing out is refused",
			layers: one(ent{hdr: tar.Header{Typeflag: tar.TypeReg, Name: longEscape, Mode: 0o644, Size: 5, Format: tar.FormatPAX}, body: "pwned"}),
			err:    "path escapes the tree", entry: longEscape},
		{name: "a name with a NUL byte is refused by the tar reader",
			layers: layers(nulName()),
			err:    "invalid tar header", notRefused: true},
		{name: "an empty name is refused",
			layers: one(fileEnt("", "x", 0o644)),
			err:    "empty name", entry: ""},
		{name: "a regular file named . is refused",
			layers: one(fileEnt(".", "x", 0o644)),
			err:    "names the tree root", entry: "."},
		{name: "a regular file named ./ is refused",
			layers: layers(setTypeflag(t, tarOf(dirEnt("./", 0o644)), tar.TypeReg)),
			err:    `ends in "/"`, entry: "./"},
		{name: "a regular file whose name ends in a slash is refused",
			layers: layers(setTypeflag(t, tarOf(dirEnt("lib64/", 0o644)), tar.TypeReg)),
			err:    `ends in "/"`, entry: "lib64/"},
		{name: "a whiteout name used as a directory is refused",
			layers: one(fileEnt(".wh.lib/x", "x", 0o644)),
			err:    "whiteout name", entry: ".wh.lib/x"},

		// Symlinks.
		{name: "a symlink to / is refused before a file can go through it",
			layers: one(symlinkEnt("hostroot", "/"), fileEnt("hostroot/etc/evil", "pwned", 0o644)),
			err:    "is absolute", entry: "hostroot"},
		{name: "a symlink with an absolute target is refused",
			layers: one(symlinkEnt("lib64/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6")),
			err:    "is absolute", entry: "lib64/libc.so.6"},
		{name: "a symlink to ../.. is refused before a file can go through it",
			layers: one(symlinkEnt("up", "../.."), fileEnt("up/evil", "pwned", 0o644)),
			err:    "escapes the tree", entry: "up"},
		{name: "a deep symlink climbing one level too far is refused",
			layers: one(symlinkEnt("a/b/l", "../../../outside/canary")),
			err:    "escapes the tree", entry: "a/b/l"},
		{name: "a symlink chain whose second link climbs out is refused",
			layers: one(symlinkEnt("a", "b"), symlinkEnt("b", "../..")),
			err:    "escapes the tree", entry: "b"},
		{name: "a symlink climbing through another symlink is refused",
			// a/b/c/s resolves to the tree root, which is allowed; the
			// lexically harmless a/b/c/s/../x would then resolve to the
			// root's parent.
			layers: one(symlinkEnt("a/b/c/s", "../../.."), symlinkEnt("l", "a/b/c/s/../outside/canary")),
			err:    `".." after a name`, entry: "l"},
		{name: "a GNU long link name climbing out is refused",
			layers: one(ent{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "lib64/evil", Linkname: gnuLongLink, Mode: 0o777, Format: tar.FormatGNU}}),
			err:    "escapes the tree", entry: "lib64/evil"},
		{name: "a GNU long absolute link name is refused",
			layers: one(ent{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "lib64/evil", Linkname: "/" + strings.Repeat("usr/", 30) + "etc/shadow", Mode: 0o777, Format: tar.FormatGNU}}),
			err:    "is absolute", entry: "lib64/evil"},
		{name: "a file below an in-tree symlink is refused",
			layers: one(dirEnt("real/", 0o755), symlinkEnt("lnk", "real"), fileEnt("lnk/x", "x", 0o644)),
			err:    `parent "lnk" is a symlink`, entry: "lnk/x"},
		{name: "a directory then a symlink of the same name to outside is refused",
			layers: one(dirEnt("d/", 0o755), symlinkEnt("d", "../outside"), fileEnt("d/canary", "pwned", 0o644)),
			err:    "escapes the tree", entry: "d"},
		{name: "a later layer turning a directory into an in-tree symlink is refused",
			layers: layers(tarOf(dirEnt("d/", 0o755), fileEnt("d/x", "x", 0o644)), tarOf(symlinkEnt("d", "elsewhere"), fileEnt("d/y", "y", 0o644))),
			err:    "changes the type of an existing directory", entry: "d", layer: 1},
		{name: "a file replaced by a symlink is not written through",
			layers: one(fileEnt("f", "x", 0o644), dirEnt("sub/", 0o755), symlinkEnt("f", "sub"), fileEnt("f/x", "x", 0o644)),
			err:    `parent "f" is a symlink`, entry: "f/x"},
		{name: "a file below a regular file is refused",
			layers: one(fileEnt("f", "x", 0o644), fileEnt("f/x", "x", 0o644)),
			err:    `parent "f" is a regular file`, entry: "f/x"},

		// Hard links.
		{name: "a hard link to /etc/passwd is refused",
			layers: one(hardlinkEnt("passwd", "/etc/passwd")),
			err:    "absolute path", entry: "passwd"},
		{name: "a hard link to ../outside/canary is refused",
			layers: one(hardlinkEnt("canary", "../outside/canary")),
			err:    "path escapes the tree", entry: "canary"},
		{name: "a hard link through an escaping symlink is refused at the symlink",
			layers: one(symlinkEnt("esc", "../outside"), hardlinkEnt("canary", "esc/canary")),
			err:    "escapes the tree", entry: "esc"},
		{name: "a hard link through an in-tree symlink is refused",
			layers: one(fileEnt("sub/file", "x", 0o644), symlinkEnt("lnk", "sub"), hardlinkEnt("h", "lnk/file")),
			err:    `parent "lnk" is a symlink`, entry: "h"},
		{name: "a hard link to a symlink is refused",
			layers: one(symlinkEnt("s", "target"), hardlinkEnt("h", "s")),
			err:    "is a symlink, not a regular file", entry: "h"},
		{name: "a hard link to a directory is refused",
			layers: one(dirEnt("d/", 0o755), hardlinkEnt("h", "d")),
			err:    "is a directory, not a regular file", entry: "h"},
		{name: "a hard link to a path not yet written is refused",
			layers: one(hardlinkEnt("h", "later"), fileEnt("later", "x", 0o644)),
			err:    "not in the tree", entry: "h"},
		{name: "a hard link to itself is refused",
			layers: one(fileEnt("f", "x", 0o644), hardlinkEnt("f", "f")),
			err:    "hardlink to itself", entry: "f"},
		{name: "a hard link whose target ends in a slash is refused",
			layers: one(fileEnt("f", "x", 0o644), hardlinkEnt("h", "f/")),
			err:    `ends in "/"`, entry: "h"},

		// Whiteouts.
		{name: "a whiteout of ../outside is refused",
			layers: one(fileEnt("../outside/.wh.canary", "", 0o644)),
			err:    "path escapes the tree", entry: "../outside/.wh.canary"},
		{name: "a whiteout of .. is refused",
			layers: one(fileEnt("lib64/.wh..", "", 0o644)),
			err:    "whiteout names no file", entry: "lib64/.wh.."},
		{name: "a whiteout with an absolute name is refused",
			layers: one(fileEnt("/etc/.wh.passwd", "", 0o644)),
			err:    "absolute path", entry: "/etc/.wh.passwd"},
		{name: "a whiteout through a symlink is refused",
			layers: layers(tarOf(fileEnt("sub/x", "x", 0o644), symlinkEnt("lnk", "sub")), tarOf(fileEnt("lnk/.wh.x", "", 0o644))),
			err:    `parent "lnk" is a symlink`, entry: "lnk/.wh.x", layer: 1},
		{name: "an opaque marker in a symlinked directory is refused",
			layers: layers(tarOf(fileEnt("real/x", "x", 0o644), symlinkEnt("lnk", "real")), tarOf(fileEnt("lnk/.wh..wh..opq", "", 0o644))),
			err:    `opaque marker in "lnk", which is a symlink`, entry: "lnk/.wh..wh..opq", layer: 1},
		{name: "unknown aufs whiteout metadata is refused",
			layers: one(fileEnt(".wh..wh.aufs", "", 0o644)),
			err:    "unknown whiteout metadata", entry: ".wh..wh.aufs"},
		{name: "an entry below aufs whiteout metadata is refused",
			layers: one(fileEnt(".wh..wh.plnk/1.2", "", 0o644)),
			err:    "whiteout name", entry: ".wh..wh.plnk/1.2"},
		{name: "a whiteout of a symlink removes the link, not what it points at",
			layers: layers(tarOf(fileEnt("sub/x", "x", 0o644), symlinkEnt("lnk", "sub")), tarOf(fileEnt(".wh.lnk", "", 0o644))),
			check: func(t *testing.T, f *fixture, _ *unpack.Tree) {
				wantTree(t, f.staging, map[string]string{"sub": "dir 755", "sub/x": `file 644 "x"`})
			}},

		// Entry types.
		{name: "a character device is refused",
			layers: one(deviceEnt("dev/mem", tar.TypeChar)),
			err:    "character device entries are not allowed", entry: "dev/mem"},
		{name: "a block device is refused",
			layers: one(deviceEnt("dev/sda", tar.TypeBlock)),
			err:    "block device entries are not allowed", entry: "dev/sda"},
		{name: "a fifo is refused",
			layers: one(deviceEnt("fifo", tar.TypeFifo)),
			err:    "fifo entries are not allowed", entry: "fifo"},
		{name: "a contiguous file is refused",
			layers: one(ent{hdr: tar.Header{Typeflag: tar.TypeCont, Name: "cont", Mode: 0o644}}),
			err:    "contiguous file entries are not allowed", entry: "cont"},
		{name: "an old GNU sparse file is refused",
			layers: one(ent{hdr: tar.Header{Typeflag: tar.TypeGNUSparse, Name: "sparse", Mode: 0o644, Format: tar.FormatGNU}}),
			err:    "sparse files are not allowed", entry: "sparse"},
		{name: "a PAX sparse file is refused",
			layers: layers(paxSparse()),
			err:    "sparse files are not allowed", entry: "sparse"},
		{name: "a PAX global header is ignored",
			layers: one(ent{hdr: tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "pax_global_header", PAXRecords: map[string]string{"comment": "hello"}}},
				fileEnt("x", "x", 0o644)),
			check: func(t *testing.T, f *fixture, _ *unpack.Tree) {
				wantTree(t, f.staging, map[string]string{"x": `file 644 "x"`})
			}},

		// Limits and broken streams.
		{name: "a header claiming a terabyte fails at the header",
			layers: one(fileEnt("lib64/small", "x", 0o644), huge),
			err:    "exceeds the limit of 8589934592 bytes", entry: "lib64/huge",
			check: func(t *testing.T, f *fixture, _ *unpack.Tree) {
				if _, err := os.Lstat(filepath.Join(f.staging, "lib64/huge")); !os.IsNotExist(err) {
					t.Errorf("lib64/huge was created: %v", err)
				}
			}},
		{name: "files past the byte limit are refused",
			limits: unpack.Limits{MaxBytes: 10},
			layers: layers(tarOf(fileEnt("a", "123456", 0o644)), tarOf(fileEnt("b", "123456", 0o644))),
			err:    "exceeds the limit of 10 bytes", entry: "b", layer: 1},
		{name: "entries past the entry limit are refused",
			limits: unpack.Limits{MaxEntries: 3},
			layers: one(dirEnt("a/", 0o755), fileEnt("a/1", "1", 0o644), fileEnt("a/2", "2", 0o644), fileEnt("a/3", "3", 0o644), fileEnt("a/4", "4", 0o644)),
			err:    "exceeds the limit of 3 entries", entry: "a/3"},
		{name: "a deep name cannot create directories past the entry limit",
			limits: unpack.Limits{MaxEntries: 30},
			layers: one(fileEnt(strings.Repeat("d/", 60)+"f", "x", 0o644)),
			err:    "exceeds the limit of 30 entries", entry: strings.Repeat("d/", 60) + "f"},
		{name: "a name deeper than 64 components is refused before any directory is made",
			layers: one(fileEnt(strings.Repeat("d/", 2000)+"f", "x", 0o644)),
			err:    "deeper than 64", entry: strings.Repeat("d/", 2000) + "f"},
		{name: "a name longer than PATH_MAX is refused",
			layers: one(ent{hdr: tar.Header{Typeflag: tar.TypeReg, Name: strings.Repeat("d/", 2048) + "f", Mode: 0o644, Format: tar.FormatPAX}}),
			err:    "longer than 4096", entry: strings.Repeat("d/", 2048) + "f"},
		{name: "a stream truncated mid-file is an error",
			layers: layers(truncated()),
			err:    "unexpected EOF", entry: "lib64/libbig.so", notRefused: true},
		{name: "a setuid file is written without the setuid bit",
			layers: one(fileEnt("bin/nvidia-smi", "#!", 0o4755), dirEnt("tmp/", 0o1777)),
			check: func(t *testing.T, f *fixture, tree *unpack.Tree) {
				wantTree(t, f.staging, map[string]string{"bin": "dir 755", "bin/nvidia-smi": `file 755 "#!"`, "tmp": "dir 777"})
				if got := tree.Stats().Stripped; strings.Join(got, ",") != "bin/nvidia-smi,tmp" {
					t.Errorf("Stripped = %q, want [bin/nvidia-smi tmp]", got)
				}
			}},

		// Content the record does not know.
		{name: "an escaping symlink planted in a non-empty staging directory is never followed",
			seed: func(t *testing.T, staging string) {
				if err := os.Symlink("../outside", filepath.Join(staging, "planted")); err != nil {
					t.Fatal(err)
				}
			},
			layers: one(fileEnt("planted/canary", "pwned", 0o644)),
			err:    "create directory", entry: "planted/canary", notRefused: true},
		{name: "a file over a planted symlink is never written through",
			seed: func(t *testing.T, staging string) {
				if err := os.Symlink("../outside/canary", filepath.Join(staging, "planted")); err != nil {
					t.Fatal(err)
				}
			},
			layers: one(fileEnt("planted", "pwned", 0o644)),
			err:    "create file", entry: "planted", notRefused: true},

		// Disjoint layers.
		{name: "disjoint layers writing the same file are refused",
			mode:   unpack.Disjoint,
			layers: layers(tarOf(fileEnt("lib64/libcuda.so.1", "a", 0o755)), tarOf(fileEnt("lib64/libcuda.so.1", "b", 0o755))),
			err:    "regular file already written by layer 0", entry: "lib64/libcuda.so.1", layer: 1},
		{name: "a disjoint layer writing a file twice is refused",
			mode:   unpack.Disjoint,
			layers: one(fileEnt("x", "a", 0o644), fileEnt("x", "b", 0o644)),
			err:    "already written by layer 0", entry: "x"},
		{name: "a disjoint layer replacing another's symlink with a directory is refused",
			mode:   unpack.Disjoint,
			layers: layers(tarOf(symlinkEnt("lib", "lib64")), tarOf(dirEnt("lib/", 0o755))),
			err:    "symlink already written by layer 0", entry: "lib/", layer: 1},
		{name: "disjoint layers disagreeing on a directory's mode are refused",
			mode:   unpack.Disjoint,
			layers: layers(tarOf(dirEnt("lib64/", 0o755)), tarOf(dirEnt("lib64/", 0o700))),
			err:    "disjoint layers must agree on directories", entry: "lib64/", layer: 1},
		{name: "a whiteout in a disjoint layer is refused",
			mode:   unpack.Disjoint,
			layers: layers(tarOf(fileEnt("x", "x", 0o644)), tarOf(fileEnt(".wh.x", "", 0o644))),
			err:    "whiteouts are not allowed in disjoint layers", entry: ".wh.x", layer: 1},
		{name: "a disjoint hard link across layers is refused",
			mode:   unpack.Disjoint,
			layers: layers(tarOf(fileEnt("lib64/libcuda.so.550", "x", 0o755)), tarOf(hardlinkEnt("lib64/libcuda.so.1", "lib64/libcuda.so.550"))),
			err:    "disjoint layers may not link across layers", entry: "lib64/libcuda.so.1", layer: 1},
	}
}

// TestBreakouts applies hostile layers to a staging directory that has a
// canary and a previous tree beside it, and checks that each is refused
// with an error naming the entry (or has its documented result), and that
// nothing outside the staging directory changed.
func TestBreakouts(t *testing.T) {
	t.Parallel()
	cases := breakouts(t)
	if len(cases) < 30 {
		t.Fatalf("only %d breakout cases", len(cases))
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			if c.seed != nil {
				c.seed(t, f.staging)
			}
			before := snapshot(t, f.parent, f.staging)
			host := hostSnapshot()
			tree := unpack.NewTree(f.root, c.limits)

			err := f.apply(tree, c.mode, c.layers...)

			checkError(t, err, c)
			for _, d := range diffSnapshots(before, snapshot(t, f.parent, f.staging)) {
				t.Errorf("outside the staging directory: %s", d)
			}
			for _, d := range diffSnapshots(host, hostSnapshot()) {
				t.Errorf("on the host: %s", d)
			}
			checkFile(t, filepath.Join(f.parent, "outside", "canary"), canaryText)
			checkFile(t, filepath.Join(f.parent, "previous", "lib64", "libnvidia-ml.so.1"), previousText)
			if c.check != nil {
				c.check(t, f, tree)
			}
		})
	}
}

// checkError fails t unless err is what breakout c expects.
func checkError(t *testing.T, err error, c breakout) {
	t.Helper()
	if c.err == "" {
		if err != nil {
			t.Fatalf("Apply: %v, want success", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("Apply succeeded, want an error containing %q", c.err)
	}
	msg := err.Error()
	t.Logf("error: %s", msg)
	if !strings.Contains(msg, c.err) {
		t.Errorf("error %q does not contain %q", msg, c.err)
	}
	if strings.Contains(msg, "failed to") {
		t.Errorf("error %q says \"failed to\"", msg)
	}
	if errors.Is(err, unpack.ErrRefused) == c.notRefused {
		t.Errorf("errors.Is(%q, ErrRefused) = %v, want %v", msg, !c.notRefused, !c.notRefused)
	}
	var ee *unpack.EntryError
	isEntry := errors.As(err, &ee)
	switch {
	case c.entry == "" && c.notRefused && !isEntry:
		// A stream-level error: it names the layer.
		if !strings.HasPrefix(msg, "unpack layer ") {
			t.Errorf("error %q does not name the layer", msg)
		}
	case !isEntry:
		t.Errorf("error %q is not an *unpack.EntryError", msg)
	default:
		if ee.Entry != c.entry || ee.Layer != c.layer {
			t.Errorf("error names layer %d entry %q, want layer %d entry %q", ee.Layer, ee.Entry, c.layer, c.entry)
		}
	}
}

// checkFile fails t unless the file at p holds want.
func checkFile(t *testing.T, p, want string) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	if string(b) != want {
		t.Errorf("%s holds %q, want %q", p, b, want)
	}
}

// TestTruncatedStream checks the error a truncated stream gives: not a
// refusal, but io.ErrUnexpectedEOF, so a caller can tell a broken download.
func TestTruncatedStream(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	full := layerTar(t, fileEnt("x", strings.Repeat("x", 2000), 0o644))
	for _, cut := range []int{100, 512 + 10, 512 + 1999} {
		err := unpack.NewTree(f.root, unpack.Limits{}).Apply(t.Context(), 3, bytes.NewReader(full[:cut]), unpack.Ordered)
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("cut at %d: error %v, want io.ErrUnexpectedEOF", cut, err)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "unpack layer 3: ") {
			t.Errorf("cut at %d: error %q does not name the layer", cut, err)
		}
		os.RemoveAll(filepath.Join(f.staging, "x"))
	}
}
