package hostinfo

import (
	"errors"
	"io/fs"
	"path"
	"path/filepath"
	"strings"
)

// errFound stops a directory walk at the first hit.
var errFound = errors.New("found")

// InTreeModule finds one module file that the running kernel shipped, under
// <root>/lib/modules/<release>/kernel or <root>/usr/lib/modules/<release>/kernel
// (Flatcar keeps modules under /usr). Its vermagic shows the kernel's
// vermagic flags, which /proc does not.
//
// It returns the module's path on the host (hostPath, for messages), the
// path to open on this machine (fsPath), and ok = false when no regular
// .ko, .ko.xz, .ko.zst or .ko.gz file exists there. The first file in
// lexical order is taken, so the answer is stable.
func InTreeModule(root, release string) (hostPath, fsPath string, ok bool) {
	if release == "" || strings.ContainsRune(release, '/') || release == "." || release == ".." {
		return "", "", false
	}
	h, err := openHost(root)
	if err != nil {
		return "", "", false
	}
	defer h.close()
	for _, dir := range []string{"lib/modules/" + release + "/kernel", "usr/lib/modules/" + release + "/kernel"} {
		resolved, err := h.resolve(filepath.FromSlash(dir))
		if err != nil {
			continue
		}
		var hit string
		start := filepath.ToSlash(resolved)
		_ = fs.WalkDir(h.root.FS(), start, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil // skip what cannot be read
			}
			if d.Type().IsRegular() && isModuleFile(d.Name()) {
				hit = p
				return errFound
			}
			return nil
		})
		if hit != "" {
			rel := strings.TrimPrefix(strings.TrimPrefix(hit, start), "/")
			return "/" + path.Join(dir, rel), filepath.Join(root, filepath.FromSlash(hit)), true
		}
	}
	return "", "", false
}

func isModuleFile(name string) bool {
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if strings.HasSuffix(name, ext) && len(name) > len(ext) {
			return true
		}
	}
	return false
}
