package unpack

import (
	"path"
	"strings"
)

// Whiteout names of the OCI image spec (and aufs before it).
const (
	whiteoutPrefix = ".wh."         // ".wh.<name>" removes <name> from lower layers
	whiteoutMeta   = ".wh..wh."     // prefix of aufs metadata names
	opaqueMarker   = ".wh..wh..opq" // removes a directory's lower contents
)

// maxNameLen is the longest entry name accepted, Linux's PATH_MAX. os.Root
// walks a path one component at a time, so the kernel would not stop a
// longer one; a tree whose paths ordinary tools cannot open is of no use.
const maxNameLen = 4096

// maxDepth is the most components an entry name may have. A driver tree is
// a dozen deep (lib/modules/<release>/kernel/drivers/video/...); every
// component of a deep name costs a lookup through os.Root and, when
// missing, a directory, so thousands of 2,000-deep names would cost
// minutes of CPU for nothing.
const maxDepth = 64

// cleanName returns the tree path an entry name stands for: path.Clean of
// the name after one leading "./" is stripped, "." for the tree root.
//
// It returns a refusal if the name is empty, longer than maxNameLen or
// deeper than maxDepth, holds
// a NUL byte, is absolute, or has a ".." component anywhere (raw or cleaned); if it
// cleans to "." or ends in "/" while isDir is false; and if any component
// but the last is a whiteout name, which this package never creates.
//
// ".." is refused outright rather than resolved: "a/../../x" and
// "lib64/../lib64/x" differ only in intent, and a name that needs ".."
// to say where it goes is not one an honest image writes.
func cleanName(raw string, isDir bool) (string, error) {
	switch {
	case raw == "":
		return "", refuse("empty name")
	case len(raw) > maxNameLen:
		return "", refuse("name of %d bytes is longer than %d", len(raw), maxNameLen)
	case strings.IndexByte(raw, 0) >= 0:
		return "", refuse("name holds a NUL byte")
	case strings.HasPrefix(raw, "/"):
		return "", refuse("absolute path; entries must be relative to the tree")
	case hasDotDot(raw):
		return "", refuse("path escapes the tree")
	case strings.HasSuffix(raw, "/") && !isDir:
		return "", refuse(`name ends in "/" but the entry is not a directory`)
	}
	name := path.Clean(strings.TrimPrefix(raw, "./"))
	if d := depth(name); d > maxDepth {
		return "", refuse("name of %d components is deeper than %d", d, maxDepth)
	}
	if hasDotDot(name) || path.IsAbs(name) {
		// Unreachable after the checks above; kept so that a change to
		// them cannot let a climbing name through.
		return "", refuse("path escapes the tree")
	}
	if name == "." && !isDir {
		return "", refuse("names the tree root but is not a directory")
	}
	if name != "." {
		for _, c := range strings.Split(path.Dir(name), "/") {
			if strings.HasPrefix(c, whiteoutPrefix) {
				return "", refuse("parent %q is a whiteout name", c)
			}
		}
	}
	return name, nil
}

// hasDotDot reports whether p has a ".." component.
func hasDotDot(p string) bool {
	for _, c := range strings.Split(p, "/") {
		if c == ".." {
			return true
		}
	}
	return false
}

// checkSymlinkTarget returns nil if a symlink at tree path name may point
// at target, and a refusal otherwise.
//
// Absolute targets are refused: trees are relocatable, and an absolute link
// would point at host files once the tree is in use (as an overlay lower
// directory, or under /opt/nvidia). A relative target is resolved
// lexically from the link's directory and refused if it climbs out of the
// tree. Dangling targets inside the tree are fine: a SONAME link may come
// before its file.
//
// Lexical resolution is sound only if no ".." follows a component that
// could itself be a symlink: with "a/b/c/s" -> "../../.." (the tree root,
// allowed), a link "l" -> "a/b/c/s/../x" is lexically "a/b/c/x" but really
// resolves to the tree root's parent. So ".." may only lead the target
// ("../../lib64/x"), where it climbs through the link's own parents, which
// are real directories (entries are never written below a symlink). Every
// link then resolves inside the tree, by induction over the links it passes.
func checkSymlinkTarget(name, target string) error {
	return CheckSymlink(name, target)
}

// CheckSymlink is the rule for symlinks in a driver tree, exported so that
// publish refuses exactly what an install would: see checkSymlinkTarget.
// name is a clean tree path.
func CheckSymlink(name, target string) error {
	switch {
	case target == "":
		return refuse("symlink has an empty target")
	case strings.IndexByte(target, 0) >= 0:
		return refuse("symlink target holds a NUL byte")
	case path.IsAbs(target):
		return refuse("symlink target %q is absolute; trees are relocatable and links must be relative", target)
	}
	climbs, descended := 0, false
	for _, c := range strings.Split(target, "/") {
		switch {
		case c == "" || c == ".":
		case c == "..":
			if descended {
				return refuse(`symlink target %q has ".." after a name; ".." may only lead the target`, target)
			}
			climbs++
		default:
			descended = true
		}
	}
	if climbs > depth(path.Dir(name)) {
		return refuse("symlink target %q escapes the tree", target)
	}
	return nil
}

// depth returns the number of components of the clean tree path dir, 0 for
// the tree root ".".
func depth(dir string) int {
	if dir == "." {
		return 0
	}
	return strings.Count(dir, "/") + 1
}

// whiteout classifies the tree path name by its last component.
type whiteout int

const (
	notWhiteout whiteout = iota
	plainWhiteout
	opaqueWhiteout
)

// classifyWhiteout returns what kind of whiteout name is and, for a plain
// whiteout, the tree path it removes. It returns a refusal for aufs
// metadata names other than the opaque marker, and for ".wh." names whose
// target is empty, "." or "..".
func classifyWhiteout(name string) (whiteout, string, error) {
	dir, base := path.Split(name)
	switch {
	case !strings.HasPrefix(base, whiteoutPrefix):
		return notWhiteout, "", nil
	case base == opaqueMarker:
		return opaqueWhiteout, "", nil
	case strings.HasPrefix(base, whiteoutMeta):
		return 0, "", refuse("unknown whiteout metadata %q", base)
	}
	target := strings.TrimPrefix(base, whiteoutPrefix)
	if target == "" || target == "." || target == ".." {
		return 0, "", refuse("whiteout names no file")
	}
	return plainWhiteout, path.Join(dir, target), nil
}
