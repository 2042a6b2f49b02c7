// Package kofixture builds small ELF relocatable objects shaped like Linux
// kernel modules (.ko files) for tests: a compiled C object with a .modinfo
// section, optionally padded to the size of a real driver module, followed
// by a module signature trailer and compressed like the kernel's build
// does. It needs gcc and objcopy, and xz, zstd or gzip for compressed
// modules; tests skip when they are missing.
package kofixture

import (
	"bytes"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Module describes a module file to build.
type Module struct {
	// Name is the file name without .ko; it must not contain '/'.
	Name string
	// Fields are raw "key=value" entries written in order into .modinfo,
	// each followed by a NUL. They may hold arbitrary bytes, so hostile
	// entries can be built. A nil Fields builds a module without a .modinfo
	// section; an empty non-nil one builds an empty section.
	Fields []string
	// Sign appends a module signature as the kernel's sign-file does: a
	// PKCS#7 blob (a structurally valid CMS SignedData claiming sha256 and
	// RSA, with fake signature bytes), struct module_signature with
	// id_type 2, and "~Module signature appended~\n".
	Sign bool
	// Compress is "" for a plain .ko, or "xz" (.ko.xz, compressed with
	// xz --check=crc32 --lzma2=dict=1MiB like the kernel), "zstd" (.ko.zst,
	// zstd -q) or "gzip" (.ko.gz, gzip -n).
	Compress string
	// Pad, when positive, adds a section .nvidia_blob of Pad bytes, so
	// that a module can have the size of a real driver's (nvidia.ko is
	// 60–90 MB, most of it the driver's binary core).
	Pad int64
	// PadFrom supplies the Pad bytes; nil means zeros.
	PadFrom io.Reader
}

// padSection is the name of the section Module.Pad adds.
const padSection = ".nvidia_blob"

// source is the C file compiled into every module.
const source = `int kofixture_init(void) { return 0; }
void kofixture_exit(void) {}
`

// Build writes dir/<Name>.ko (or .ko.xz, .ko.zst, .ko.gz) and returns its
// path, as Write does. It calls t.Skip when gcc, objcopy or the compressor
// is not installed, and t.Fatal when a tool fails or m is invalid.
func Build(t testing.TB, dir string, m Module) string {
	t.Helper()
	out, err := Write(dir, m)
	var missing *MissingToolError
	if errors.As(err, &missing) {
		t.Skipf("kofixture: %v", err)
	}
	if err != nil {
		t.Fatalf("kofixture: %v", err)
	}
	return out
}

// MissingToolError reports a build tool that is not installed.
type MissingToolError struct{ Tool string }

func (e *MissingToolError) Error() string {
	return e.Tool + " is not installed; it is needed to build test kernel modules"
}

// Write writes dir/<Name>.ko (or .ko.xz, .ko.zst, .ko.gz) and returns its
// path. It compiles a tiny C file with gcc -c and adds the .modinfo section
// with objcopy. It returns a *MissingToolError when a tool is not
// installed, and an error when a tool fails or m is invalid.
func Write(dir string, m Module) (string, error) {
	if m.Name == "" || strings.ContainsRune(m.Name, '/') {
		return "", fmt.Errorf("invalid module name %q", m.Name)
	}
	suffix, compressor, err := compression(m.Compress)
	if err != nil {
		return "", err
	}
	tools := []string{"gcc", "objcopy"}
	if compressor != nil {
		tools = append(tools, compressor[0])
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			return "", &MissingToolError{Tool: tool}
		}
	}

	scratch, err := os.MkdirTemp("", "kofixture-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(scratch)
	obj := filepath.Join(scratch, "module.o")
	cmd := exec.Command("gcc", "-c", "-x", "c", "-O0", "-o", obj, "-")
	cmd.Stdin = strings.NewReader(source)
	if _, err := run(cmd); err != nil {
		return "", err
	}

	ko := obj
	var sections []string
	if m.Fields != nil {
		info := filepath.Join(scratch, "modinfo")
		var b bytes.Buffer
		for _, f := range m.Fields {
			b.WriteString(f)
			b.WriteByte(0)
		}
		if err := os.WriteFile(info, b.Bytes(), 0o644); err != nil {
			return "", fmt.Errorf("write .modinfo contents: %w", err)
		}
		sections = append(sections,
			"--add-section", ".modinfo="+info,
			"--set-section-flags", ".modinfo=alloc,readonly")
	}
	if m.Pad > 0 {
		pad := filepath.Join(scratch, "pad")
		if err := writePad(pad, m.Pad, m.PadFrom); err != nil {
			return "", err
		}
		sections = append(sections,
			"--add-section", padSection+"="+pad,
			"--set-section-flags", padSection+"=alloc,readonly,data")
	}
	if len(sections) > 0 {
		ko = filepath.Join(scratch, "module.ko")
		args := append(sections, obj, ko)
		if _, err := run(exec.Command("objcopy", args...)); err != nil {
			return "", err
		}
	}

	out := filepath.Join(dir, m.Name+".ko"+suffix)
	if !m.Sign && compressor == nil {
		// Streamed rather than read whole: a padded module may be large.
		if err := copyFile(ko, out); err != nil {
			return "", fmt.Errorf("write module: %w", err)
		}
		return out, nil
	}
	data, err := os.ReadFile(ko)
	if err != nil {
		return "", fmt.Errorf("read built module: %w", err)
	}
	if m.Sign {
		data = AppendSignature(data)
	}
	if compressor != nil {
		cmd := exec.Command(compressor[0], compressor[1:]...)
		cmd.Stdin = bytes.NewReader(data)
		if data, err = run(cmd); err != nil {
			return "", err
		}
	}

	if err := os.WriteFile(out, data, 0o644); err != nil {
		return "", fmt.Errorf("write module: %w", err)
	}
	return out, nil
}

// writePad writes n bytes from r (zeros when r is nil) to a new file p.
func writePad(p string, n int64, r io.Reader) error {
	f, err := os.Create(p)
	if err != nil {
		return fmt.Errorf("write %s contents: %w", padSection, err)
	}
	if r == nil {
		err = f.Truncate(n)
	} else if _, err = io.CopyN(f, r, n); errors.Is(err, io.EOF) {
		err = fmt.Errorf("PadFrom ends before %d bytes: %w", n, io.ErrUnexpectedEOF)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s contents: %w", padSection, err)
	}
	return nil
}

// copyFile copies the file from to a new file to, mode 0644.
func copyFile(from, to string) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, err = io.Copy(dst, src)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	return err
}

// compression returns the file suffix and compressor command line (reading
// stdin, writing stdout) for a Module.Compress value, or an error for an
// unknown one.
func compression(name string) (suffix string, command []string, err error) {
	switch name {
	case "":
		return "", nil, nil
	case "xz":
		return ".xz", []string{"xz", "--check=crc32", "--lzma2=dict=1MiB", "-c"}, nil
	case "zstd":
		return ".zst", []string{"zstd", "-q", "-c"}, nil
	case "gzip":
		return ".gz", []string{"gzip", "-n", "-c"}, nil
	default:
		return "", nil, fmt.Errorf("unknown compression %q (want \"\", xz, zstd or gzip)", name)
	}
}

// run runs cmd and returns its standard output, or an error carrying the
// command's standard error when it fails.
func run(cmd *exec.Cmd) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("run %s: %w\n%s", strings.Join(cmd.Args, " "), err, stderr.Bytes())
	}
	return stdout.Bytes(), nil
}

// SignatureMagic ends a signed module file.
const SignatureMagic = "~Module signature appended~\n"

// AppendSignature returns module followed by a module signature trailer as
// described at Module.Sign. It does not modify module's contents.
func AppendSignature(module []byte) []byte {
	sig := fakePKCS7()
	out := append(bytes.Clone(module), sig...)
	out = append(out, SignatureInfo(2, uint32(len(sig)))...)
	return append(out, SignatureMagic...)
}

// SignatureInfo returns a struct module_signature (12 bytes) with the given
// id_type and sig_len and all other fields zero, for building hostile
// trailers.
func SignatureInfo(idType byte, sigLen uint32) []byte {
	info := make([]byte, 12)
	info[2] = idType
	binary.BigEndian.PutUint32(info[8:], sigLen)
	return info
}

// fakePKCS7 returns a DER CMS ContentInfo holding a SignedData with one
// SignerInfo that claims a sha256 digest and an RSA signature. The
// signature bytes are not a real signature.
func fakePKCS7() []byte {
	type algorithm struct {
		OID    asn1.ObjectIdentifier
		Params asn1.RawValue
	}
	type contentInfo struct {
		ContentType asn1.ObjectIdentifier
	}
	type signerInfo struct {
		Version   int
		SID       asn1.RawValue
		Digest    algorithm
		Algorithm algorithm
		Signature []byte
	}
	type signedData struct {
		Version          int
		DigestAlgorithms []algorithm `asn1:"set"`
		Content          contentInfo
		SignerInfos      []signerInfo `asn1:"set"`
	}
	type outer struct {
		ContentType asn1.ObjectIdentifier
		Content     asn1.RawValue
	}

	sha256OID := algorithm{asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}, asn1.NullRawValue}
	rsaOID := algorithm{asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}, asn1.NullRawValue}
	keyID := sha256.Sum256([]byte("kofixture signing key"))
	fakeSig := sha256.Sum256([]byte("kofixture signature"))
	sd, err := asn1.Marshal(signedData{
		Version:          1,
		DigestAlgorithms: []algorithm{sha256OID},
		Content:          contentInfo{asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}},
		SignerInfos: []signerInfo{{
			Version:   3,
			SID:       asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, Bytes: keyID[:20]},
			Digest:    sha256OID,
			Algorithm: rsaOID,
			Signature: bytes.Repeat(fakeSig[:], 8), // 256 bytes, like RSA-2048
		}},
	})
	if err != nil {
		panic("kofixture: marshal fake PKCS#7 SignedData: " + err.Error())
	}
	der, err := asn1.Marshal(outer{
		ContentType: asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2},
		Content:     asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: sd},
	})
	if err != nil {
		panic("kofixture: marshal fake PKCS#7 ContentInfo: " + err.Error())
	}
	return der
}

// Standard returns the .modinfo fields of an NVIDIA-like module: version,
// license "Dual MIT/GPL", a srcversion derived from name and version,
// depends (the given modules joined by commas; empty when there are none,
// as the kernel writes it), name and vermagic.
func Standard(name, version, vermagic string, depends ...string) []string {
	sum := sha256.Sum256([]byte(name + "\x00" + version))
	return []string{
		"version=" + version,
		"license=Dual MIT/GPL",
		"srcversion=" + strings.ToUpper(fmt.Sprintf("%x", sum[:12]))[:23],
		"depends=" + strings.Join(depends, ","),
		"name=" + name,
		"vermagic=" + vermagic,
	}
}
