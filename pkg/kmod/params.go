package kmod

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"unicode"
)

// splitParams splits a parameter string such as `a=1 b="x y"` into words
// at white space outside double quotes, as the kernel's parse_args does.
// Quotes are kept in the words.
func splitParams(s string) []string {
	var words []string
	var word strings.Builder
	quoted := false
	for _, r := range s {
		switch {
		case r == '"':
			quoted = !quoted
			word.WriteRune(r)
		case unicode.IsSpace(r) && !quoted:
			if word.Len() > 0 {
				words = append(words, word.String())
				word.Reset()
			}
		default:
			word.WriteRune(r)
		}
	}
	if word.Len() > 0 {
		words = append(words, word.String())
	}
	return words
}

// paramKey returns the name of a parameter word ("a" for "a=1", "a" for a
// bare "a"), dashes as underscores: the kernel takes them as the same
// character in parameter names.
func paramKey(word string) string {
	key, _, _ := strings.Cut(word, "=")
	return strings.ReplaceAll(key, "-", "_")
}

// setParam returns words with word in place of the word that has the same
// key, or with word appended when there is none.
func setParam(words []string, word string) []string {
	key := paramKey(word)
	if i := slices.IndexFunc(words, func(w string) bool { return paramKey(w) == key }); i >= 0 {
		words[i] = word
		return words
	}
	return append(words, word)
}

// mergeParams returns the module's parameters: the modprobe.d words, then
// the configured ones, a later word replacing an earlier one with the same
// key where that one stood. It returns them joined by spaces, "" for none.
func mergeParams(modprobe, config []string) string {
	var words []string
	for _, w := range slices.Concat(modprobe, config) {
		words = setParam(words, w)
	}
	return strings.Join(words, " ")
}

// configParams splits the configured parameter strings, keyed by module
// name in either spelling, into words keyed by normalised module name.
// When both spellings of a name are given, the words of the one that sorts
// later (the underscore one) win per key. It returns an error for an
// invalid module name.
func configParams(params map[string]string) (map[string][]string, error) {
	out := make(map[string][]string, len(params))
	for _, name := range slices.Sorted(maps.Keys(params)) {
		n, err := normName(name)
		if err != nil {
			return nil, fmt.Errorf("read parameters: %w", err)
		}
		for _, w := range splitParams(params[name]) {
			out[n] = setParam(out[n], w)
		}
	}
	return out, nil
}

// readModprobeDir reads the "options <module> k=v ..." lines of every
// *.conf file in dir, in file name order as modprobe does. Other commands
// (install, softdep, blacklist, ...) are ignored: install would run a
// shell command from an image, and the rest do not apply to loading named
// modules.
//
// It returns the parameter words per normalised module name, later words
// replacing earlier ones with the same key; an empty map when dir is "" or
// does not exist; or an error naming the file or directory that cannot be
// read.
func readModprobeDir(dir string) (map[string][]string, error) {
	out := make(map[string][]string)
	if dir == "" {
		return out, nil
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.conf"))
	if err != nil {
		return nil, fmt.Errorf("read modprobe.d %s: %w", dir, err)
	}
	for _, file := range files { // Glob sorts them
		data, err := os.ReadFile(file)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read modprobe.d: %w", err)
		}
		parseModprobe(string(data), out)
	}
	return out, nil
}

// parseModprobe adds the options lines of one modprobe.d file to opts.
// Lines ending in a backslash continue on the next; lines whose first word
// starts with '#' are comments. A line naming an invalid module is
// skipped, as it can match no module.
func parseModprobe(data string, opts map[string][]string) {
	for _, line := range logicalLines(data) {
		words := strings.Fields(line)
		if len(words) < 3 || words[0] != "options" {
			continue
		}
		name, err := normName(words[1])
		if err != nil {
			continue
		}
		rest := strings.TrimSpace(strings.TrimPrefix(line, words[0]))
		rest = strings.TrimPrefix(rest, words[1])
		for _, w := range splitParams(rest) {
			opts[name] = setParam(opts[name], w)
		}
	}
}

// logicalLines returns the lines of data with backslash-newline
// continuations joined and comment lines dropped.
func logicalLines(data string) []string {
	var lines []string
	var cur strings.Builder
	for _, l := range strings.Split(data, "\n") {
		l = strings.TrimSuffix(l, "\r")
		if strings.HasSuffix(l, "\\") {
			cur.WriteString(strings.TrimSuffix(l, "\\"))
			cur.WriteByte(' ')
			continue
		}
		cur.WriteString(l)
		line := strings.TrimSpace(cur.String())
		cur.Reset()
		if line != "" && !strings.HasPrefix(line, "#") {
			lines = append(lines, line)
		}
	}
	return lines
}
