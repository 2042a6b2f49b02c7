package kmod

import (
	"path/filepath"
	"strings"
)

// Enforcement reports whether the running kernel refuses unsigned modules,
// and why: kernel lockdown in integrity or confidentiality mode (what
// Secure Boot turns on in most distributions), read from
// <root>/sys/kernel/security/lockdown, or module.sig_enforce, read from
// <root>/sys/module/module/parameters/sig_enforce.
//
// It returns true and a reason such as "lockdown=integrity" or
// "module.sig_enforce=Y" (both, joined by ", ", when both apply), or false
// and "" when neither does. A file that is missing or cannot be read
// counts as not enforcing: the kernel still enforces what it enforces,
// and Load then reports its refusal after trying.
func Enforcement(root string) (bool, string) {
	var why []string
	if mode := lockdownMode(root); mode == "integrity" || mode == "confidentiality" {
		why = append(why, "lockdown="+mode)
	}
	if sigEnforced(root) {
		why = append(why, "module.sig_enforce=Y")
	}
	return len(why) > 0, strings.Join(why, ", ")
}

// lockdownMode returns the selected lockdown mode, the bracketed word of
// <root>/sys/kernel/security/lockdown ("none [integrity] confidentiality"),
// or "" when the file is missing or unreadable or selects none.
func lockdownMode(root string) string {
	s, _, err := readAttr(filepath.Join(root, "sys", "kernel", "security", "lockdown"))
	if err != nil {
		return ""
	}
	for _, w := range strings.Fields(s) {
		if len(w) > 2 && strings.HasPrefix(w, "[") && strings.HasSuffix(w, "]") {
			return w[1 : len(w)-1]
		}
	}
	return ""
}

// sigEnforced reports whether <root>/sys/module/module/parameters/sig_enforce
// says Y; false when it is missing or unreadable.
func sigEnforced(root string) bool {
	s, _, err := readAttr(sysModulePath(root, "module", "parameters", "sig_enforce"))
	return err == nil && (s == "Y" || s == "1")
}
