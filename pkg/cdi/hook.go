package cdi

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	oci "github.com/opencontainers/runtime-spec/specs-go"
)

// LdconfigDropIn is the file UpdateLdcache writes in the container.
const LdconfigDropIn = "/etc/ld.so.conf.d/00-nvidia-driverd.conf"

// ldconfigPaths are where FindLdconfig looks, in order.
var ldconfigPaths = []string{"/sbin/ldconfig", "/usr/sbin/ldconfig"}

// ContainerRoot reads the OCI state JSON a runtime passes a hook on
// stdin, reads the bundle's config.json and returns the container's root
// filesystem path: root.path, taken relative to the bundle when not
// absolute. It returns an error naming the bundle or file when the state
// or config cannot be read or parsed, or names no bundle or root.
func ContainerRoot(state io.Reader) (string, error) {
	var st oci.State
	if err := json.NewDecoder(state).Decode(&st); err != nil {
		return "", fmt.Errorf("read the OCI state on stdin: %w", err)
	}
	if st.Bundle == "" {
		return "", errors.New("the OCI state on stdin names no bundle")
	}
	if !filepath.IsAbs(st.Bundle) {
		return "", fmt.Errorf("the OCI state names bundle %q, which is not absolute", st.Bundle)
	}
	p := filepath.Join(st.Bundle, "config.json")
	data, err := os.ReadFile(p)
	if err != nil {
		return "", fmt.Errorf("read the config of bundle %s: %w", st.Bundle, err)
	}
	var cfg oci.Spec
	if err := json.Unmarshal(data, &cfg); err != nil {
		return "", fmt.Errorf("parse %s: %w", p, err)
	}
	if cfg.Root == nil || cfg.Root.Path == "" {
		return "", fmt.Errorf("%s has no root.path", p)
	}
	root := cfg.Root.Path
	if !filepath.IsAbs(root) {
		root = filepath.Join(st.Bundle, root)
	}
	return filepath.Clean(root), nil
}

// FindLdconfig returns the host's ldconfig, the first of /sbin/ldconfig
// and /usr/sbin/ldconfig that exists, or an error naming both.
func FindLdconfig() (string, error) {
	for _, p := range ldconfigPaths {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("no ldconfig at %s", strings.Join(ldconfigPaths, " or "))
}

// UpdateLdcache makes folders (container paths) known to the dynamic
// linker of the glibc container whose root filesystem is rootfs: it writes
// LdconfigDropIn listing them, so that later ldconfig runs in the
// container keep them, and runs ldconfig -r rootfs with the folders on the
// command line, which puts them first and covers images whose ld.so.conf
// does not include ld.so.conf.d. ldconfig makes the SONAME links there too.
//
// rootfs is hostile: the drop-in is written through os.Root, so no
// symlink in it leads outside, and ldconfig -r chroots into it before it
// reads or writes anything. ldconfig is the host's (an empty string means
// FindLdconfig): it is trusted, which no binary of the image is, and the
// glibc cache format it writes is read by every glibc since 2.3.
//
// It returns an error naming the path when a folder is not an absolute,
// clean path ld.so.conf can carry, the drop-in cannot be written, or
// ldconfig fails (with its output).
func UpdateLdcache(rootfs string, folders []string, ldconfig string) error {
	if len(folders) == 0 {
		return errors.New("update ldcache: no folder given")
	}
	for _, f := range folders {
		if err := checkFolder(f); err != nil {
			return fmt.Errorf("update ldcache of %s: %w", rootfs, err)
		}
	}
	if ldconfig == "" {
		var err error
		if ldconfig, err = FindLdconfig(); err != nil {
			return fmt.Errorf("update ldcache of %s: %w", rootfs, err)
		}
	}
	if err := writeDropIn(rootfs, folders); err != nil {
		return fmt.Errorf("update ldcache of %s: %w", rootfs, err)
	}
	args := append([]string{"-r", rootfs}, folders...)
	cmd := exec.Command(ldconfig, args...)
	cmd.Env = []string{}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("update ldcache of %s: %s %s: %w: %s", rootfs, ldconfig, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// checkFolder returns an error when folder is not an absolute clean path,
// or holds a character ld.so.conf would take as a separator or comment.
func checkFolder(folder string) error {
	if !filepath.IsAbs(folder) || filepath.Clean(folder) != folder {
		return fmt.Errorf("folder %q is not an absolute clean path", folder)
	}
	for _, r := range folder {
		if r <= ' ' || r == 0x7f || strings.ContainsRune(`:,#=\`, r) {
			return fmt.Errorf("folder %q holds %q, which ld.so.conf cannot carry", folder, r)
		}
	}
	return nil
}

// writeDropIn replaces LdconfigDropIn in rootfs with folders, one a line,
// through os.Root: a temporary file renamed over it. A drop-in that
// already says so is left alone.
func writeDropIn(rootfs string, folders []string) error {
	r, err := os.OpenRoot(rootfs)
	if err != nil {
		return fmt.Errorf("open container root: %w", err)
	}
	defer r.Close()
	rel := strings.TrimPrefix(LdconfigDropIn, "/")
	dir := filepath.Dir(rel)
	content := []byte("# Written by nvidia-driverd cdi-hook: the NVIDIA driver's libraries.\n" + strings.Join(folders, "\n") + "\n")
	if old, err := r.ReadFile(rel); err == nil && bytes.Equal(old, content) {
		return nil
	}
	if err := r.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s in the container: %w", "/"+dir, err)
	}
	var suffix [8]byte
	_, _ = rand.Read(suffix[:]) // never fails
	tmp := filepath.Join(dir, "."+filepath.Base(rel)+".tmp-"+hex.EncodeToString(suffix[:]))
	f, err := r.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("write %s in the container: %w", LdconfigDropIn, err)
	}
	_, err = f.Write(content)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = r.Rename(tmp, rel)
	}
	if err != nil {
		_ = r.Remove(tmp) // best effort: a hidden leftover only
		return fmt.Errorf("write %s in the container: %w", LdconfigDropIn, err)
	}
	return nil
}
