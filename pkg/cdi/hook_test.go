package cdi

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const libDir = "/usr/local/nvidia/lib64"

// bundle lays out an OCI bundle whose config.json names rootPath, and a
// glibc-like root filesystem at <bundle>/rootfs with libfoo.so.1.2.3
// (SONAME libfoo.so.1) in libDir. It returns the bundle and the rootfs.
func bundle(t *testing.T, rootPath string) (string, string) {
	t.Helper()
	b := t.TempDir()
	rootfs := filepath.Join(b, "rootfs")
	sharedObject(t, filepath.Join(rootfs, libDir), "libfoo.so.1.2.3", "libfoo.so.1")
	writeFile(t, filepath.Join(rootfs, "etc/ld.so.conf"), "include /etc/ld.so.conf.d/*.conf\n", 0o644)
	if rootPath == "" {
		rootPath = rootfs
	}
	cfg, err := json.Marshal(map[string]any{"ociVersion": "1.0.2", "root": map[string]any{"path": rootPath, "readonly": false}})
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(b, "config.json"), string(cfg), 0o644)
	return b, rootfs
}

func state(bundle string) string {
	data, _ := json.Marshal(map[string]any{"ociVersion": "1.0.2", "id": "c1", "status": "creating", "pid": 4242, "bundle": bundle})
	return string(data)
}

// ldcache returns what ldconfig -p prints for the cache of rootfs.
func ldcache(t *testing.T, rootfs string) string {
	t.Helper()
	ldconfig, err := FindLdconfig()
	if err != nil {
		t.Skip(err)
	}
	out, err := exec.Command(ldconfig, "-r", rootfs, "-p").CombinedOutput()
	if err != nil {
		t.Fatalf("ldconfig -p: %v\n%s", err, out)
	}
	return string(out)
}

func TestUpdateLdcache(t *testing.T) {
	t.Parallel()
	if _, err := FindLdconfig(); err != nil {
		t.Skip(err)
	}
	for name, rel := range map[string]bool{"relative root.path": true, "absolute root.path": false} {
		t.Run(name, func(t *testing.T) {
			path := ""
			if rel {
				path = "rootfs"
			}
			b, rootfs := bundle(t, path)
			got, err := ContainerRoot(strings.NewReader(state(b)))
			if err != nil || got != rootfs {
				t.Fatalf("ContainerRoot = %q, %v, want %q", got, err, rootfs)
			}
			if _, err := os.Stat(filepath.Join(rootfs, "etc/ld.so.cache")); !os.IsNotExist(err) {
				t.Fatalf("a cache before the hook: %v", err)
			}
			for range 2 {
				if err := UpdateLdcache(got, []string{libDir, "/opt/extra"}, ""); err != nil {
					t.Fatal(err)
				}
			}
			cache := ldcache(t, rootfs)
			if !strings.Contains(cache, "libfoo.so.1 (") || !strings.Contains(cache, "=> "+libDir+"/libfoo.so.1\n") {
				t.Errorf("the cache does not resolve libfoo.so.1 into %s:\n%s", libDir, cache)
			}
			link, err := os.Readlink(filepath.Join(rootfs, libDir, "libfoo.so.1"))
			if err != nil || link != "libfoo.so.1.2.3" {
				t.Errorf("SONAME link = %q, %v", link, err)
			}
			dropIn, err := os.ReadFile(filepath.Join(rootfs, LdconfigDropIn))
			if err != nil {
				t.Fatal(err)
			}
			if lines := strings.Split(strings.TrimSpace(string(dropIn)), "\n"); len(lines) != 3 || lines[1] != libDir || lines[2] != "/opt/extra" {
				t.Errorf("drop-in:\n%s", dropIn)
			}
			entries, _ := os.ReadDir(filepath.Dir(filepath.Join(rootfs, LdconfigDropIn)))
			if len(entries) != 1 {
				t.Errorf("ld.so.conf.d holds %v", entries)
			}
		})
	}
}

// A root without /etc/ld.so.conf still gets the folders: they are on
// ldconfig's command line.
func TestUpdateLdcacheWithoutLdSoConf(t *testing.T) {
	t.Parallel()
	if _, err := FindLdconfig(); err != nil {
		t.Skip(err)
	}
	_, rootfs := bundle(t, "")
	must(t, os.Remove(filepath.Join(rootfs, "etc/ld.so.conf")))
	if err := UpdateLdcache(rootfs, []string{libDir}, ""); err != nil {
		t.Fatal(err)
	}
	if cache := ldcache(t, rootfs); !strings.Contains(cache, "=> "+libDir+"/libfoo.so.1\n") {
		t.Errorf("libfoo.so.1 not cached:\n%s", cache)
	}
}

func TestUpdateLdcacheStaysInsideTheRoot(t *testing.T) {
	t.Parallel()
	if _, err := FindLdconfig(); err != nil {
		t.Skip(err)
	}
	for name, c := range map[string]struct {
		link   string // path in rootfs made a symlink
		target func(outside string) string
		fails  bool
	}{
		"absolute ld.so.conf.d": {"etc/ld.so.conf.d", func(o string) string { return o }, true},
		"relative ld.so.conf.d": {"etc/ld.so.conf.d", func(o string) string { return "../../../" + filepath.Base(o) }, true},
		"absolute etc":          {"etc", func(o string) string { return o }, true},
		"the drop-in itself":    {strings.TrimPrefix(LdconfigDropIn, "/"), func(o string) string { return filepath.Join(o, "victim") }, false},
	} {
		t.Run(name, func(t *testing.T) {
			_, rootfs := bundle(t, "")
			// outside sits next to the bundle, so that ../ from rootfs reaches it.
			outside := filepath.Join(filepath.Dir(filepath.Dir(rootfs)), "outside-"+strings.ReplaceAll(name, " ", "-"))
			must(t, os.MkdirAll(outside, 0o755))
			t.Cleanup(func() { os.RemoveAll(outside) })
			writeFile(t, filepath.Join(outside, "victim"), "host data\n", 0o644)
			link := filepath.Join(rootfs, c.link)
			must(t, os.RemoveAll(link))
			symlink(t, c.target(outside), link)

			err := UpdateLdcache(rootfs, []string{libDir}, "")
			if c.fails && (err == nil || !strings.Contains(err.Error(), rootfs)) {
				t.Errorf("error %v, want one naming %s", err, rootfs)
			}
			if !c.fails && err != nil {
				t.Errorf("error %v", err)
			}
			entries, _ := os.ReadDir(outside)
			if len(entries) != 1 || entries[0].Name() != "victim" {
				t.Errorf("written outside the root: %v", entries)
			}
			if data, _ := os.ReadFile(filepath.Join(outside, "victim")); string(data) != "host data\n" {
				t.Errorf("victim changed: %q", data)
			}
			if !c.fails {
				fi, err := os.Lstat(filepath.Join(rootfs, LdconfigDropIn))
				if err != nil || !fi.Mode().IsRegular() {
					t.Errorf("drop-in is not a regular file: %v, %v", fi, err)
				}
			}
		})
	}
}

func TestUpdateLdcacheErrors(t *testing.T) {
	t.Parallel()
	_, rootfs := bundle(t, "")
	for _, c := range []struct {
		folders []string
		ldcfg   string
		want    string
	}{
		{nil, "", "no folder given"},
		{[]string{"usr/lib"}, "", "not an absolute clean path"},
		{[]string{"/usr/lib/../lib"}, "", "not an absolute clean path"},
		{[]string{"/usr/lib\n/etc"}, "", "ld.so.conf cannot carry"},
		{[]string{"/usr/lib,x"}, "", "ld.so.conf cannot carry"},
		{[]string{libDir}, "/bin/false", "/bin/false -r " + rootfs + " " + libDir},
	} {
		err := UpdateLdcache(rootfs, c.folders, c.ldcfg)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("UpdateLdcache(%q, %q): error %v, want one containing %q", c.folders, c.ldcfg, err, c.want)
		}
	}
	if err := UpdateLdcache(filepath.Join(rootfs, "gone"), []string{libDir}, "/bin/true"); err == nil || !strings.Contains(err.Error(), "open container root") {
		t.Errorf("missing root: %v", err)
	}
}

func TestContainerRootErrors(t *testing.T) {
	t.Parallel()
	b, _ := bundle(t, "")
	noRoot := t.TempDir()
	writeFile(t, filepath.Join(noRoot, "config.json"), `{"ociVersion": "1.0.2"}`, 0o644)
	badJSON := t.TempDir()
	writeFile(t, filepath.Join(badJSON, "config.json"), `{"root": `, 0o644)
	for _, c := range []struct{ state, want string }{
		{"", "read the OCI state on stdin"},
		{`{"ociVersion": "1.0.2", "id": "c1"}`, "names no bundle"},
		{`{"bundle": "bundle"}`, `bundle "bundle", which is not absolute`},
		{state(filepath.Join(b, "gone")), "read the config of bundle " + filepath.Join(b, "gone")},
		{state(noRoot), filepath.Join(noRoot, "config.json") + " has no root.path"},
		{state(badJSON), "parse " + filepath.Join(badJSON, "config.json")},
	} {
		if _, err := ContainerRoot(strings.NewReader(c.state)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("state %q: error %v, want one containing %q", c.state, err, c.want)
		}
	}
}
