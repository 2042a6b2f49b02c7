package libs

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// mount is one line of a mountinfo file (proc_pid_mountinfo(5)).
type mount struct {
	id, parent int
	point      string   // mount point, unescaped
	fstype     string   // file system type
	source     string   // mount source, unescaped
	lower      []string // overlay lower layers, topmost first; nil for other file systems
}

// readMountinfo returns the mounts listed in the mountinfo file at path. It
// returns an error when the file cannot be read or a line is malformed.
func readMountinfo(path string) ([]mount, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	mounts, err := parseMountinfo(string(data))
	if err != nil {
		return nil, fmt.Errorf("read mount table %s: %w", path, err)
	}
	return mounts, nil
}

// parseMountinfo returns the mounts listed in mountinfo text, in order. It
// returns an error naming the line when a line has too few fields, no
// separator or a non-numeric mount ID.
func parseMountinfo(text string) ([]mount, error) {
	var mounts []mount
	for i, line := range strings.Split(text, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		m, err := parseMountLine(line)
		if err != nil {
			return nil, fmt.Errorf("parse line %d: %w", i+1, err)
		}
		mounts = append(mounts, m)
	}
	return mounts, nil
}

// parseMountLine parses one mountinfo line:
//
//	ID PARENT MAJ:MIN ROOT MOUNT-POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER-OPTIONS
//
// It returns an error when the line is malformed.
func parseMountLine(line string) (mount, error) {
	f := strings.Fields(line)
	sep := -1
	for i := 6; i < len(f); i++ {
		if f[i] == "-" {
			sep = i
			break
		}
	}
	if sep < 0 || len(f) < sep+4 {
		return mount{}, fmt.Errorf("malformed mountinfo line %q", line)
	}
	id, err1 := strconv.Atoi(f[0])
	parent, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil {
		return mount{}, fmt.Errorf("malformed mount IDs in %q", line)
	}
	m := mount{
		id:     id,
		parent: parent,
		point:  unescapeOctal(f[4]),
		fstype: f[sep+1],
		source: unescapeOctal(f[sep+2]),
	}
	if m.fstype == "overlay" {
		m.lower = overlayLower(f[sep+3])
	}
	return m, nil
}

// overlayLower returns the lower layers named in overlayfs super options,
// topmost first: those of lowerdir=, or those of the lowerdir+= options
// newer kernels show for layers added one by one. Data-only layers (after
// "::", or datadir+=) are not part of the merged view and are left out.
func overlayLower(opts string) []string {
	var lower []string
	for _, opt := range strings.Split(opts, ",") {
		switch {
		case strings.HasPrefix(opt, "lowerdir="):
			lower = append(lower, splitLayers(unescapeOctal(strings.TrimPrefix(opt, "lowerdir=")))...)
		case strings.HasPrefix(opt, "lowerdir+="):
			lower = append(lower, unescapeOctal(strings.TrimPrefix(opt, "lowerdir+=")))
		}
	}
	return lower
}

// splitLayers splits an overlayfs lowerdir value at ':' not escaped with
// '\', dropping the escapes, and stops at "::", after which come
// data-only layers.
func splitLayers(v string) []string {
	var layers []string
	var cur strings.Builder
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case c == '\\' && i+1 < len(v):
			i++
			cur.WriteByte(v[i])
		case c == ':' && cur.Len() == 0:
			return layers
		case c == ':':
			layers = append(layers, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	if cur.Len() > 0 {
		layers = append(layers, cur.String())
	}
	return layers
}

// unescapeOctal undoes the kernel's \ooo escapes of mountinfo fields
// (space, tab, newline, backslash, and in options ',' and '='); other
// backslashes are kept.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// isOctal reports whether c is an octal digit.
func isOctal(c byte) bool { return c >= '0' && c <= '7' }

// stackAt returns the mounts on mount point point, topmost first: the one
// no other mount there sits on, then each one's parent while that is
// mounted on point too. When several chains exist (a parent mount was
// covered), the chain whose top comes last in the table wins.
func stackAt(mounts []mount, point string) []mount {
	byID := map[int]mount{}
	hasChild := map[int]bool{}
	for _, m := range mounts {
		if m.point == point {
			byID[m.id] = m
		}
	}
	for _, m := range byID {
		if _, ok := byID[m.parent]; ok && m.parent != m.id {
			hasChild[m.parent] = true
		}
	}
	top, found := mount{}, false
	for _, m := range mounts {
		if m.point == point && !hasChild[m.id] {
			top, found = m, true
		}
	}
	if !found {
		return nil
	}
	stack := []mount{top}
	for len(stack) < len(byID) {
		below, ok := byID[stack[len(stack)-1].parent]
		if !ok || below.id == stack[len(stack)-1].id {
			break
		}
		stack = append(stack, below)
	}
	return stack
}
