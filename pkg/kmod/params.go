package kmod

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"unicode"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostfs"
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

// maxParams bounds the parameters of one module: the nvidia module has
// about a hundred; the kernel takes at most a page of them anyway.
const maxParams = 1024

// paramList is a module's parameter words, a later word replacing the
// earlier one with the same key where that one stood; adding one is
// constant time, so merging n words is linear.
type paramList struct {
	words []string
	at    map[string]int // index in words by key
	max   int            // the most words; 0 means maxParams
}

// set adds word, or puts it in place of the word with the same key. It
// returns an error when the list would hold more than maxParams words.
func (l *paramList) set(word string) error {
	key := paramKey(word)
	if i, ok := l.at[key]; ok {
		l.words[i] = word
		return nil
	}
	limit := l.max
	if limit == 0 {
		limit = maxParams
	}
	if len(l.words) >= limit {
		return fmt.Errorf("more than %d parameters", limit)
	}
	if l.at == nil {
		l.at = map[string]int{}
	}
	l.at[key] = len(l.words)
	l.words = append(l.words, word)
	return nil
}

// mergeParams returns the module's parameters: the modprobe.d words, then
// the configured ones, a later word replacing an earlier one with the same
// key where that one stood. It returns them joined by spaces, "" for none.
// Both lists are capped at maxParams already, so the merge holds at most
// twice that, and no word is dropped.
func mergeParams(modprobe, config []string) string {
	l := paramList{max: 2 * maxParams}
	for _, w := range slices.Concat(modprobe, config) {
		_ = l.set(w) // within the cap by construction
	}
	return strings.Join(l.words, " ")
}

// configParams splits the configured parameter strings, keyed by module
// name in either spelling, into words keyed by normalised module name.
// When both spellings of a name are given, the words of the one that sorts
// later (the underscore one) win per key. It returns an error for an
// invalid module name.
func configParams(params map[string]string) (map[string][]string, error) {
	lists := map[string]*paramList{}
	for _, name := range slices.Sorted(maps.Keys(params)) {
		n, err := normName(name)
		if err != nil {
			return nil, fmt.Errorf("read parameters: %w", err)
		}
		if err := addParams(lists, n, params[name]); err != nil {
			return nil, fmt.Errorf("read parameters of %s: %w", name, err)
		}
	}
	return wordsOf(lists), nil
}

// addParams adds the words of params to module's list in lists.
func addParams(lists map[string]*paramList, module, params string) error {
	l := lists[module]
	if l == nil {
		l = &paramList{}
		lists[module] = l
	}
	for _, w := range splitParams(params) {
		if err := l.set(w); err != nil {
			return err
		}
	}
	return nil
}

func wordsOf(lists map[string]*paramList) map[string][]string {
	out := make(map[string][]string, len(lists))
	for m, l := range lists {
		out[m] = l.words
	}
	return out
}

// maxModprobeBytes bounds one modprobe.d file of a driver tree.
const maxModprobeBytes = 1 << 20

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
	lists := map[string]*paramList{}
	if dir == "" {
		return map[string][]string{}, nil
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.conf"))
	if err != nil {
		return nil, fmt.Errorf("read modprobe.d %s: %w", dir, err)
	}
	for _, file := range files { // Glob sorts them
		data, err := hostfs.ReadRegular(file, maxModprobeBytes)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read modprobe.d: %w", err)
		}
		if err := parseModprobe(string(data), lists); err != nil {
			return nil, fmt.Errorf("read modprobe.d: %s: %w", file, err)
		}
	}
	return wordsOf(lists), nil
}

// parseModprobe adds the options lines of one modprobe.d file to opts.
// Lines ending in a backslash continue on the next; lines whose first word
// starts with '#' are comments. A line naming an invalid module is
// skipped, as it can match no module.
func parseModprobe(data string, lists map[string]*paramList) error {
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
		if err := addParams(lists, name, rest); err != nil {
			return fmt.Errorf("module %s: %w", name, err)
		}
	}
	return nil
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
