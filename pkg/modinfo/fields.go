package modinfo

import (
	"bytes"
	"fmt"
)

// maxQuoted is how many bytes of a bad entry an error message quotes.
const maxQuoted = 40

// ParseFields parses the contents of a .modinfo section: NUL-terminated
// "key=value" strings, possibly separated or followed by NUL padding. The
// last entry may lack its terminating NUL. Values may contain '=' and any
// byte but NUL; they are kept as they are.
//
// It returns a map from each key to its values in section order, never nil
// (empty for a section without entries), and the keys in the order they
// were first seen (nil when there are none). It returns an error when a
// non-empty entry has no '=' or an empty key; the error names the entry's
// byte offset in the section.
func ParseFields(section []byte) (map[string][]string, []string, error) {
	fields := make(map[string][]string)
	var keys []string
	offset := 0
	for offset < len(section) {
		entry := section[offset:]
		if i := bytes.IndexByte(entry, 0); i >= 0 {
			entry = entry[:i]
		}
		start := offset
		offset += len(entry) + 1
		if len(entry) == 0 {
			continue // padding
		}
		key, value, ok := bytes.Cut(entry, []byte("="))
		if !ok {
			return nil, nil, fmt.Errorf("entry at offset %d has no '=': %q", start, truncate(entry))
		}
		if len(key) == 0 {
			return nil, nil, fmt.Errorf("entry at offset %d has an empty key: %q", start, truncate(entry))
		}
		k := string(key)
		if _, seen := fields[k]; !seen {
			keys = append(keys, k)
		}
		fields[k] = append(fields[k], string(value))
	}
	return fields, keys, nil
}

// truncate shortens b for quoting in an error message.
func truncate(b []byte) string {
	if len(b) <= maxQuoted {
		return string(b)
	}
	return string(b[:maxQuoted]) + "..."
}
