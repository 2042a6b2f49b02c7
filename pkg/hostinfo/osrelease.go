package hostinfo

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
)

// OS families, as returned by OSRelease.Family.
const (
	FamilyFlatcar = "flatcar" // Flatcar Container Linux
	FamilyCoreOS  = "coreos"  // CoreOS Container Linux (the original, not Fedora CoreOS)
	FamilyGeneric = "generic" // anything else
)

// OSRelease holds the fields of a host's os-release file.
type OSRelease struct {
	ID         string // ID, "linux" when the file has none
	IDLike     string // ID_LIKE
	Name       string // NAME
	PrettyName string // PRETTY_NAME
	Version    string // VERSION
	VersionID  string // VERSION_ID
	BuildID    string // BUILD_ID

	// Fields holds every assignment in the file, the ones above included.
	// A defaulted ID does not appear here.
	Fields map[string]string

	// Path is the file the fields came from, as opened: root joined with
	// /etc/os-release or /usr/lib/os-release, before following symlinks.
	Path string
}

// Family returns FamilyFlatcar if ID is "flatcar", FamilyCoreOS if ID is
// "coreos", and FamilyGeneric for any other ID. ID_LIKE is not consulted:
// Flatcar says ID_LIKE=coreos but is told apart by its ID.
func (o OSRelease) Family() string {
	switch o.ID {
	case FamilyFlatcar:
		return FamilyFlatcar
	case FamilyCoreOS:
		return FamilyCoreOS
	default:
		return FamilyGeneric
	}
}

// OSVersion returns the version that images are keyed by: VERSION_ID, or
// VERSION when VERSION_ID is empty, or "" when both are.
func (o OSRelease) OSVersion() string {
	if o.VersionID != "" {
		return o.VersionID
	}
	return o.Version
}

// OSRelease reads the host's os-release file: <root>/etc/os-release,
// or <root>/usr/lib/os-release if the former does not exist, following
// os-release(5). Symlinks, absolute ones included, are resolved inside
// root, so an /etc/os-release -> /usr/lib/os-release link reads
// <root>/usr/lib/os-release, never the local machine's file.
//
// It returns the parsed fields, with ID set to "linux" when the file has
// none. It returns an error wrapping fs.ErrNotExist and naming both paths
// when neither file exists, an error naming the path when a file cannot be
// read, and an error naming the path and line when the file is malformed.
func (h *Host) OSRelease() (OSRelease, error) {
	for _, name := range []string{etcOSRelease, usrLibOSRelease} {
		b, err := h.readFile(name)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return OSRelease{}, fmt.Errorf("read os-release: %w", err)
		}
		fields, err := ParseOSRelease(bytes.NewReader(b))
		if err != nil {
			return OSRelease{}, fmt.Errorf("read os-release: %s: %w", h.hostPath(name), err)
		}
		return newOSRelease(fields, h.hostPath(name)), nil
	}
	return OSRelease{}, fmt.Errorf("read os-release: neither %s nor %s exists: %w",
		h.hostPath(etcOSRelease), h.hostPath(usrLibOSRelease), fs.ErrNotExist)
}

// newOSRelease fills an OSRelease from parsed fields read from path.
func newOSRelease(fields map[string]string, path string) OSRelease {
	o := OSRelease{
		ID:         fields["ID"],
		IDLike:     fields["ID_LIKE"],
		Name:       fields["NAME"],
		PrettyName: fields["PRETTY_NAME"],
		Version:    fields["VERSION"],
		VersionID:  fields["VERSION_ID"],
		BuildID:    fields["BUILD_ID"],
		Fields:     fields,
		Path:       path,
	}
	if o.ID == "" {
		o.ID = "linux" // os-release(5): "If not set, a default of ID=linux may be used."
	}
	return o
}

// ParseOSRelease parses os-release(5) syntax and returns every assignment;
// a key assigned twice keeps its last value.
//
// Each line is blank, a comment starting with '#', or KEY=value. Leading
// and trailing whitespace of a line is ignored. KEY must match
// [A-Za-z_][A-Za-z0-9_]*. The value is a sequence of parts, concatenated
// as in the shell:
//   - unquoted text, where a backslash makes the next character literal
//     (a backslash ending the line is kept);
//   - '...' single-quoted text, taken literally;
//   - "..." double-quoted text, where \" \\ \$ and \` stand for the second
//     character and a backslash before any other character is kept.
//
// It returns an error of the form "line N: ..." for a line without '=', a
// bad key or an unterminated quote, and the reader's error if reading
// fails. Empty input yields an empty map.
func ParseOSRelease(r io.Reader) (map[string]string, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	fields := make(map[string]string)
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		key, raw, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("line %d: missing '=' in %q", i+1, line)
		}
		if !validKey(key) {
			return nil, fmt.Errorf("line %d: invalid key %q", i+1, key)
		}
		value, err := unquote(raw)
		if err != nil {
			return nil, fmt.Errorf("line %d: %s: %w", i+1, key, err)
		}
		fields[key] = value
	}
	return fields, nil
}

// validKey reports whether k matches [A-Za-z_][A-Za-z0-9_]*.
func validKey(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		letter := c == '_' || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z')
		digit := '0' <= c && c <= '9'
		if !letter && !(digit && i > 0) {
			return false
		}
	}
	return true
}

// unquote decodes the value part of an assignment as described for
// ParseOSRelease. It returns an error for an unterminated quote.
func unquote(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			if i+1 < len(s) {
				i++
			}
			b.WriteByte(s[i])
		case '\'':
			end := strings.IndexByte(s[i+1:], '\'')
			if end < 0 {
				return "", errors.New("unterminated single quote")
			}
			b.WriteString(s[i+1 : i+1+end])
			i += 1 + end // now at the closing quote
		case '"':
			n, err := unquoteDouble(&b, s[i+1:])
			if err != nil {
				return "", err
			}
			i += n // now at the closing quote
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}

// unquoteDouble writes the double-quoted text at the start of s, which
// follows an opening '"', to b. It returns how many bytes of s it used,
// the closing quote included, or an error if there is no closing quote.
func unquoteDouble(b *strings.Builder, s string) (int, error) {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '"':
			return i + 1, nil
		case '\\':
			if i+1 < len(s) && strings.IndexByte("\"\\$`", s[i+1]) >= 0 {
				i++
				b.WriteByte(s[i])
			} else {
				b.WriteByte(c)
			}
		default:
			b.WriteByte(c)
		}
	}
	return 0, errors.New("unterminated double quote")
}
