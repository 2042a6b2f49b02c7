package unpack

import (
	"errors"
	"strings"
	"testing"
)

func TestCleanName(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		raw   string
		isDir bool
		want  string // clean name, or "error: <substring>"
	}{
		{"lib64/libcuda.so.1", false, "lib64/libcuda.so.1"},
		{"./lib64/libcuda.so.1", false, "lib64/libcuda.so.1"},
		{"lib64//./libcuda.so.1", false, "lib64/libcuda.so.1"},
		{"lib64/", true, "lib64"},
		{"./", true, "."},
		{".", true, "."},
		{"././x", false, "x"},
		{"", false, "error: empty name"},
		{"a\x00b", false, "error: NUL"},
		{"/x", false, "error: absolute"},
		{"//x", true, "error: absolute"},
		{"..", true, "error: escapes"},
		{"../x", false, "error: escapes"},
		{"a/..", true, "error: escapes"},
		{"a/../b", false, "error: escapes"},
		{"./../x", false, "error: escapes"},
		{".", false, "error: names the tree root"},
		{"x/", false, `error: ends in "/"`},
		{".wh.a/b", false, "error: whiteout name"},
		{"a/.wh..wh.plnk/b", false, "error: whiteout name"},
		{"a/.wh.b", false, "a/.wh.b"}, // a whiteout itself; classifyWhiteout's business
		{"...", false, "..."},
		{"a/..b", false, "a/..b"},
	} {
		got, err := cleanName(c.raw, c.isDir)
		if err != nil {
			if !errors.Is(err, ErrRefused) {
				t.Errorf("cleanName(%q) error %v does not match ErrRefused", c.raw, err)
			}
			got = "error: " + err.Error()
		}
		if got != c.want && !(strings.HasPrefix(c.want, "error: ") && strings.Contains(got, strings.TrimPrefix(c.want, "error: "))) {
			t.Errorf("cleanName(%q, %v) = %q, want %q", c.raw, c.isDir, got, c.want)
		}
	}
}

func TestCheckSymlinkTarget(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name, target string
		ok           bool
	}{
		{"lib64/libcuda.so.1", "libcuda.so.550.54.14", true},
		{"lib64/libcuda.so.1", "./libcuda.so.550.54.14", true},
		{"lib/firmware", "../firmware", true},
		{"a/b/c", "../../x/y", true},
		{"a/b/c", "../..", true},
		{"a/b/c", "../../..", false},
		{"a/b/c", "../../../", false},
		{"x", "..", false},
		{"x", ".", true},
		{"x", "dangling/later", true},
		{"x", "/usr/lib", false},
		{"x", "", false},
		{"x", "a\x00b", false},
		{"a/b/l", "s/../x", false},
		{"a/b/l", "../s/../x", false},
		{"a/b/l", "s/..", false},
	} {
		err := checkSymlinkTarget(c.name, c.target)
		if (err == nil) != c.ok {
			t.Errorf("checkSymlinkTarget(%q, %q) = %v, want ok=%v", c.name, c.target, err, c.ok)
		}
	}
}

func TestClassifyWhiteout(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name   string
		kind   whiteout
		target string
		err    bool
	}{
		{"lib64/libcuda.so", notWhiteout, "", false},
		{"lib64/.wh.libcuda.so", plainWhiteout, "lib64/libcuda.so", false},
		{".wh.lib64", plainWhiteout, "lib64", false},
		{"lib64/.wh..wh..opq", opaqueWhiteout, "", false},
		{".wh..wh..opq", opaqueWhiteout, "", false},
		{"lib64/.wh..wh.aufs", 0, "", true},
		{"lib64/.wh.", 0, "", true},
		{"lib64/.wh..", 0, "", true},  // "."
		{"lib64/.wh...", 0, "", true}, // ".."
		{"lib64/.wh....", plainWhiteout, "lib64/...", false},
	} {
		kind, target, err := classifyWhiteout(c.name)
		if kind != c.kind || (err != nil) != c.err || (c.kind == plainWhiteout && target != c.target) {
			t.Errorf("classifyWhiteout(%q) = %v, %q, %v; want %v, %q, error %v", c.name, kind, target, err, c.kind, c.target, c.err)
		}
	}
}
