package main

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// fakeELF returns a minimal 64-bit little-endian ELF executable for
// machine, with a PT_INTERP header when dynamic, followed by payload.
func fakeELF(t *testing.T, machine elf.Machine, dynamic bool, payload string) []byte {
	t.Helper()
	progs := []elf.Prog64{{Type: uint32(elf.PT_LOAD), Flags: uint32(elf.PF_R | elf.PF_X), Align: 0x1000}}
	if dynamic {
		progs = append(progs, elf.Prog64{Type: uint32(elf.PT_INTERP), Flags: uint32(elf.PF_R), Align: 1})
	}
	hdr := elf.Header64{
		Type: uint16(elf.ET_EXEC), Machine: uint16(machine), Version: uint32(elf.EV_CURRENT),
		Entry: 0x401000, Phoff: 64, Ehsize: 64, Phentsize: 56, Phnum: uint16(len(progs)), Shentsize: 64,
	}
	copy(hdr.Ident[:], elf.ELFMAG)
	hdr.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	hdr.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	hdr.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.LittleEndian, hdr); err != nil {
		t.Fatal(err)
	}
	if err := binary.Write(&buf, binary.LittleEndian, progs); err != nil {
		t.Fatal(err)
	}
	buf.WriteString(payload)
	return buf.Bytes()
}

// inputs writes a fake static binary, a fake static ldconfig and a CA
// bundle to a temporary directory and returns their paths and the binary.
func inputs(t *testing.T) (bin, ldconfig, ca string, binData []byte) {
	t.Helper()
	dir := t.TempDir()
	binData = fakeELF(t, elf.EM_X86_64, false, "nvidia-driverd payload")
	bin, ldconfig, ca = filepath.Join(dir, "nvidia-driverd"), filepath.Join(dir, "ldconfig"), filepath.Join(dir, "ca.crt")
	write(t, bin, binData, 0o755)
	write(t, ldconfig, fakeELF(t, elf.EM_X86_64, false, "ldconfig payload"), 0o755)
	write(t, ca, []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"), 0o644)
	return bin, ldconfig, ca, binData
}

func write(t *testing.T, p string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(p, data, mode); err != nil {
		t.Fatal(err)
	}
}

// runImage runs the command and returns its exit status, stdout and stderr.
func runImage(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), args, &stdout, &stderr)
	return code, strings.TrimSpace(stdout.String()), stderr.String()
}

// buildLayout builds into a new OCI layout and returns its directory and
// the printed digest.
func buildLayout(t *testing.T, extra ...string) (string, string) {
	t.Helper()
	bin, ldconfig, ca, _ := inputs(t)
	dir := filepath.Join(t.TempDir(), "layout")
	args := append([]string{"--binary", bin, "--ldconfig", ldconfig, "--ca-certificates", ca,
		"--version", "v1.2.3", "--revision", "0123456789abcdef", "--mtime", "1700000000",
		"--oci-layout", dir}, extra...)
	code, out, errOut := runImage(t, args...)
	if code != 0 {
		t.Fatalf("image %v: exit %d: %s", args, code, errOut)
	}
	return dir, out
}

// layoutImage returns the image named DefaultName in the layout dir.
func layoutImage(t *testing.T, dir string) v1.Image {
	t.Helper()
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	ii, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := ii.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("index holds %d manifests, want 1", len(im.Manifests))
	}
	if got := im.Manifests[0].Annotations["org.opencontainers.image.ref.name"]; got != DefaultName {
		t.Errorf("ref name %q, want %q", got, DefaultName)
	}
	img, err := ii.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func TestTheSameInputsGiveTheSameDigest(t *testing.T) {
	dir1, d1 := buildLayout(t)
	dir2, d2 := buildLayout(t)
	if d1 == "" || d1 != d2 {
		t.Fatalf("digests %q and %q, want equal", d1, d2)
	}
	idx1, err := os.ReadFile(filepath.Join(dir1, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	idx2, err := os.ReadFile(filepath.Join(dir2, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(idx1, idx2) {
		t.Errorf("index.json differs:\n%s\n%s", idx1, idx2)
	}
	if got, _ := layoutImage(t, dir1).Digest(); got.String() != d1 {
		t.Errorf("layout holds %s, printed %s", got, d1)
	}

	_, d3 := buildLayout(t, "--mtime", "1700000001")
	if d3 == d1 {
		t.Errorf("another mtime gave the same digest %s", d3)
	}
}

func TestBuildingAgainReplacesTheImageInTheLayout(t *testing.T) {
	dir, _ := buildLayout(t)
	bin, _, _, _ := inputs(t)
	code, out, errOut := runImage(t, "--binary", bin, "--mtime", "5", "--oci-layout", dir)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if got, _ := layoutImage(t, dir).Digest(); got.String() != out {
		t.Errorf("layout holds %s, want the new %s", got, out)
	}
}

func TestTheImageRunsTheBinaryAndCarriesItsLabels(t *testing.T) {
	bin, ldconfig, ca, binData := inputs(t)
	dir := filepath.Join(t.TempDir(), "layout")
	code, _, errOut := runImage(t, "--binary", bin, "--ldconfig", ldconfig, "--ca-certificates", ca,
		"--version", "v1.2.3", "--revision", "0123456789abcdef", "--mtime", "1700000000", "--oci-layout", dir)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	img := layoutImage(t, dir)

	if mt, _ := img.MediaType(); mt != types.OCIManifestSchema1 {
		t.Errorf("manifest media type %s, want %s", mt, types.OCIManifestSchema1)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" {
		t.Errorf("platform %s/%s, want linux/amd64", cf.OS, cf.Architecture)
	}
	if got := cf.Config.Entrypoint; len(got) != 1 || got[0] != BinaryPath {
		t.Errorf("entrypoint %q, want [%s]", got, BinaryPath)
	}
	if got := strings.Join(cf.Config.Cmd, " "); got != "run --root /rootfs" {
		t.Errorf("cmd %q, want run --root /rootfs", got)
	}
	if got := strings.Join(cf.Config.Env, " "); !strings.Contains(got, "PATH=/usr/local/bin:") {
		t.Errorf("env %q does not put /usr/local/bin first on PATH", got)
	}
	if !cf.Created.Time.Equal(time.Unix(1700000000, 0)) {
		t.Errorf("created %s, want the mtime", cf.Created)
	}
	manifest, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		AnnotationSource:   DefaultSource,
		AnnotationVersion:  "v1.2.3",
		AnnotationRevision: "0123456789abcdef",
		AnnotationCreated:  "2023-11-14T22:13:20Z",
	}
	for k, v := range want {
		if got := cf.Config.Labels[k]; got != v {
			t.Errorf("label %s = %q, want %q", k, got, v)
		}
		if got := manifest.Annotations[k]; got != v {
			t.Errorf("annotation %s = %q, want %q", k, got, v)
		}
	}

	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	if mt, _ := layers[0].MediaType(); mt != types.OCILayer {
		t.Errorf("layer media type %s, want %s", mt, types.OCILayer)
	}
	entries := readLayer(t, layers[0])
	for _, p := range []string{BinaryPath, LdconfigPath, CAPath, "/usr/", "/usr/local/", "/usr/local/bin/", "/etc/ssl/certs/"} {
		if _, ok := entries[strings.TrimPrefix(p, "/")]; !ok {
			t.Errorf("layer lacks %s", p)
		}
	}
	for n, e := range entries {
		if e.hdr.Mode&0o7000 != 0 {
			t.Errorf("%s has mode %o: setuid, setgid or sticky", n, e.hdr.Mode)
		}
		if e.hdr.Uid != 0 || e.hdr.Gid != 0 {
			t.Errorf("%s is owned by %d:%d, want 0:0", n, e.hdr.Uid, e.hdr.Gid)
		}
		if !e.hdr.ModTime.Equal(time.Unix(1700000000, 0)) {
			t.Errorf("%s has mtime %s", n, e.hdr.ModTime)
		}
	}
	b := entries[strings.TrimPrefix(BinaryPath, "/")]
	if b.hdr.Typeflag != tar.TypeReg || b.hdr.Mode != 0o755 {
		t.Errorf("binary: type %c mode %o, want a regular file of mode 755", b.hdr.Typeflag, b.hdr.Mode)
	}
	if !bytes.Equal(b.data, binData) {
		t.Errorf("binary in the layer differs from %s", bin)
	}
	if ca := entries[strings.TrimPrefix(CAPath, "/")]; ca.hdr.Mode != 0o644 {
		t.Errorf("CA bundle mode %o, want 644", ca.hdr.Mode)
	}
}

type layerEntry struct {
	hdr  *tar.Header
	data []byte
}

func readLayer(t *testing.T, l v1.Layer) map[string]layerEntry {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	out := map[string]layerEntry{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if _, dup := out[hdr.Name]; dup {
			t.Errorf("layer holds %s twice", hdr.Name)
		}
		out[hdr.Name] = layerEntry{hdr, data}
	}
}

// testRegistry serves an in-memory registry on loopback and returns its
// host:port.
func testRegistry(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

func TestPushAndPullBack(t *testing.T) {
	host := testRegistry(t)
	bin, _, _, _ := inputs(t)
	ref := host + "/nvidia-driverd/nvidia-driverd:test"
	code, out, errOut := runImage(t, "--binary", bin, "--push", ref, "--insecure", host)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	tag, err := name.NewTag(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(tag)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := img.Digest(); d.String() != out {
		t.Errorf("pulled %s, pushed %s", d, out)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if got := cf.Config.Entrypoint; len(got) != 1 || got[0] != BinaryPath {
		t.Errorf("pulled entrypoint %q", got)
	}
}

func TestPlainHTTPIsRefusedUnlessListed(t *testing.T) {
	host := testRegistry(t)
	bin, _, _, _ := inputs(t)
	ref := host + "/nvidia-driverd/nvidia-driverd:test"
	code, _, errOut := runImage(t, "--binary", bin, "--push", ref)
	if code != 1 {
		t.Fatalf("exit %d, want 1: %s", code, errOut)
	}
	tag, err := name.NewTag(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Head(tag); err == nil {
		t.Error("the image was pushed over plain HTTP to a registry not listed with --insecure")
	}
}

func TestBuildRefuses(t *testing.T) {
	bin, ldconfig, ca, _ := inputs(t)
	dir := t.TempDir()
	dynamic := filepath.Join(dir, "dynamic")
	write(t, dynamic, fakeELF(t, elf.EM_X86_64, true, ""), 0o755)
	arm := filepath.Join(dir, "arm64")
	write(t, arm, fakeELF(t, elf.EM_AARCH64, false, ""), 0o755)
	script := filepath.Join(dir, "script")
	write(t, script, []byte("#!/bin/sh\nexec ldconfig.real \"$@\"\n"), 0o755)
	notPEM := filepath.Join(dir, "not-pem")
	write(t, notPEM, []byte("hello"), 0o644)

	for _, tc := range []struct {
		name string
		o    Options
		want string
	}{
		{"a dynamically linked binary", Options{Binary: dynamic}, "dynamically linked"},
		{"a shell script as ldconfig", Options{Binary: bin, Ldconfig: script}, "not an ELF"},
		{"an ldconfig for another machine", Options{Binary: bin, Ldconfig: arm}, "is for arm64"},
		{"a CA bundle without certificates", Options{Binary: bin, CACerts: notPEM}, "no PEM"},
		{"a missing binary", Options{Binary: filepath.Join(dir, "missing")}, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Build(tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Build: %v, want an error with %q", err, tc.want)
			}
		})
	}

	t.Run("an arm64 binary makes an arm64 image", func(t *testing.T) {
		img, err := Build(Options{Binary: arm})
		if err != nil {
			t.Fatal(err)
		}
		if cf, _ := img.ConfigFile(); cf.Architecture != "arm64" {
			t.Errorf("architecture %s, want arm64", cf.Architecture)
		}
	})

	t.Run("neither a layout nor a push", func(t *testing.T) {
		if code, _, _ := runImage(t, "--binary", bin, "--ldconfig", ldconfig, "--ca-certificates", ca); code != 2 {
			t.Errorf("exit %d, want 2", code)
		}
	})
	t.Run("a bad mtime", func(t *testing.T) {
		if code, _, _ := runImage(t, "--binary", bin, "--mtime", "yesterday", "--oci-layout", t.TempDir()); code != 2 {
			t.Errorf("exit %d, want 2", code)
		}
	})
}

func TestDefaultNameIsTheMakefiles(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if n, v, ok := strings.Cut(line, "?="); ok && strings.TrimSpace(n) == "IMAGE" {
			if strings.TrimSpace(v) != DefaultName {
				t.Errorf("Makefile IMAGE ?= %s, DefaultName %s", strings.TrimSpace(v), DefaultName)
			}
			return
		}
	}
	t.Error("the Makefile does not set IMAGE ?=")
}
