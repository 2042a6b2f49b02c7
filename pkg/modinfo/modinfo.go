package modinfo

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

const (
	// MaxDecompressedSize is the most bytes Read decompresses a compressed
	// module into. The largest NVIDIA module is about 80 MiB uncompressed.
	MaxDecompressedSize = 256 << 20

	// MaxModinfoSize is the largest .modinfo section Parse reads. Real
	// modules have a few KiB.
	MaxModinfoSize = 1 << 20
)

// Compression names as reported in Info.Compression.
const (
	CompressionNone = ""
	CompressionXZ   = "xz"
	CompressionZstd = "zstd"
	CompressionGzip = "gzip"
)

// Info is what a kernel module file says about itself.
type Info struct {
	// Path is the path given to Read; empty after Parse.
	Path string
	// Name is the name= field. If the module has none, Read derives it from
	// the file name: dashes become underscores and the .ko, .ko.xz, .ko.zst
	// or .ko.gz suffix is removed, as the kernel does.
	Name string
	// Version is the version= field; empty if absent.
	Version string
	// Vermagic is the raw vermagic= field; see ParseVermagic.
	Vermagic string
	// SrcVersion is the srcversion= field.
	SrcVersion string
	// License is the license= field.
	License string
	// Depends is the depends= field split on commas, entries trimmed of
	// spaces and empty ones dropped; nil if the module depends on nothing.
	Depends []string
	// Fields holds every key=value entry of .modinfo, values in file order
	// per key (parm, alias, firmware, ...). Never nil after a successful
	// Read or Parse.
	Fields map[string][]string
	// Signature is the appended module signature, or nil when there is none.
	Signature *Signature
	// Compression is CompressionNone, CompressionXZ, CompressionZstd or
	// CompressionGzip, detected from the file's content, not its name.
	Compression string
}

// Magic numbers that start an ELF file and the compressed formats.
const (
	magicELF  = "\x7fELF"
	magicXZ   = "\xfd7zXZ\x00"
	magicZstd = "\x28\xb5\x2f\xfd"
	magicGzip = "\x1f\x8b"
)

// Read parses the kernel module at path.
//
// A plain ELF module is read in place, never whole into memory. A module
// compressed with xz, zstd or gzip (detected from its first bytes) is
// decompressed into memory, at most MaxDecompressedSize bytes, and then
// parsed.
//
// It returns the module's Info with Path set to path, or an error of the
// form "read modinfo: <path>: ..." when the file cannot be opened or read,
// is not a (compressed) ELF file, decompresses to more than
// MaxDecompressedSize bytes, or fails Parse.
func Read(path string) (*Info, error) {
	return read(path, true)
}

// ReadPlain is Read for files that must be plain ELF: the modules of a
// driver tree, which came from an image and are loaded as they are. A
// compressed file is refused without being decompressed (a hostile xz
// header could otherwise demand a dictionary of gigabytes).
func ReadPlain(path string) (*Info, error) {
	return read(path, false)
}

func read(path string, allowCompressed bool) (*Info, error) {
	info, err := readFile(path, allowCompressed)
	if err != nil {
		return nil, fmt.Errorf("read modinfo: %s: %w", path, err)
	}
	info.Path = path
	if info.Name == "" {
		info.Name = nameFromPath(path)
	}
	return info, nil
}

func readFile(path string, allowCompressed bool) (*Info, error) {
	// Stat before opening so that a FIFO or device is refused rather than
	// blocking in open.
	if err := checkRegular(os.Stat(path)); err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err := checkRegular(st, err); err != nil {
		return nil, err
	}

	head := make([]byte, 6)
	n, err := f.ReadAt(head, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read header: %w", err)
	}
	head = head[:n]

	compression := detectCompression(head)
	if compression == CompressionNone {
		return Parse(f, st.Size())
	}
	if !allowCompressed {
		return nil, fmt.Errorf("%s-compressed module where a plain .ko is required", compression)
	}
	data, err := decompress(f, compression, MaxDecompressedSize)
	if err != nil {
		return nil, err
	}
	info, err := Parse(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return nil, fmt.Errorf("parse %s-decompressed module: %w", compression, err)
	}
	info.Compression = compression
	return info, nil
}

// checkRegular returns the error of a stat call, or an error if the file
// it describes is not a regular file, or nil.
func checkRegular(st os.FileInfo, err error) error {
	switch {
	case err != nil:
		return err
	case st.IsDir():
		return errors.New("not a regular file: is a directory")
	case !st.Mode().IsRegular():
		return fmt.Errorf("not a regular file: mode %v", st.Mode())
	}
	return nil
}

// detectCompression returns the compression whose magic number head starts
// with, or CompressionNone for anything else (including ELF).
func detectCompression(head []byte) string {
	switch {
	case strings.HasPrefix(string(head), magicXZ):
		return CompressionXZ
	case strings.HasPrefix(string(head), magicZstd):
		return CompressionZstd
	case strings.HasPrefix(string(head), magicGzip):
		return CompressionGzip
	default:
		return CompressionNone
	}
}

// decompress reads all of r, compressed with the given compression, into
// memory. It returns the decompressed bytes, or an error when the stream is
// corrupt or decompresses to more than limit bytes.
func decompress(r io.Reader, compression string, limit int64) ([]byte, error) {
	var dr io.Reader
	switch compression {
	case CompressionXZ:
		// The kernel compresses modules with "xz --check=crc32"; the reader
		// verifies whichever check the stream declares.
		xr, err := xz.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("decompress xz: %w", err)
		}
		dr = xr
	case CompressionZstd:
		// The window need not exceed the output, so the limit bounds it
		// too, within what the decoder accepts.
		window := min(max(uint64(limit), zstd.MinWindowSize), zstd.MaxWindowSize)
		zr, err := zstd.NewReader(r,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(window),
			zstd.WithDecoderMaxMemory(uint64(limit)))
		if err != nil {
			return nil, fmt.Errorf("decompress zstd: %w", err)
		}
		defer zr.Close()
		dr = zr
	case CompressionGzip:
		gr, err := gzip.NewReader(r)
		if err != nil {
			return nil, fmt.Errorf("decompress gzip: %w", err)
		}
		defer gr.Close()
		dr = gr
	default:
		return nil, fmt.Errorf("decompress: unknown compression %q", compression)
	}

	data, err := io.ReadAll(io.LimitReader(dr, limit+1))
	// The zstd decoder refuses early when a frame declares a content size
	// over its memory limit.
	if int64(len(data)) > limit || errors.Is(err, zstd.ErrDecoderSizeExceeded) {
		return nil, fmt.Errorf("decompress %s: decompressed size exceeds %d bytes", compression, limit)
	}
	if err != nil {
		return nil, fmt.Errorf("decompress %s: %w", compression, err)
	}
	return data, nil
}

// nameFromPath derives a module name from its file name the way the kernel
// build does: the .ko suffix (and any compression suffix) is removed and
// dashes become underscores.
func nameFromPath(path string) string {
	base := filepath.Base(path)
	if name, ok := ModuleName(base); ok {
		return name
	}
	return KernelName(base)
}

// KernelName is the kernel's spelling of a module name: dashes and
// underscores are interchangeable in module names, and the kernel (in
// /sys/module, in depends=) uses underscores.
func KernelName(name string) string {
	return strings.ReplaceAll(name, "-", "_")
}

// CheckName returns name as KernelName spells it, surrounding white space
// removed, or an error when the result is empty, "." or "..", or holds a
// '/' or a NUL: no module is called that, and such a name would reach
// outside /sys/module. It is the one rule for names that come from
// configuration, modules.dep or a module's depends= field.
func CheckName(name string) (string, error) {
	n := KernelName(strings.TrimSpace(name))
	if n == "" || n == "." || n == ".." || strings.ContainsAny(n, "/\x00") {
		return "", fmt.Errorf("invalid module name %q", name)
	}
	return n, nil
}

// ModuleName returns the kernel's name for a module file name: the name
// without .ko, .ko.xz, .ko.zst or .ko.gz, dashes as underscores. ok is
// false for a file name that is not a module's.
func ModuleName(file string) (name string, ok bool) {
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if base, found := strings.CutSuffix(file, ext); found && base != "" {
			return KernelName(base), true
		}
	}
	return "", false
}

// Parse parses an uncompressed kernel module: size bytes of ELF, read
// through r, optionally followed by a module signature.
//
// It returns the module's Info (Path empty, Name empty if the module has no
// name= field, Compression empty), or an error when the bytes are not ELF,
// the ELF is corrupt, there is no .modinfo section or it is larger than
// MaxModinfoSize, an entry of .modinfo has no '=', a signature trailer is
// present but malformed, or reading r fails.
func Parse(r io.ReaderAt, size int64) (*Info, error) {
	if size < 0 {
		return nil, fmt.Errorf("parse module: negative size %d", size)
	}
	sig, elfSize, err := readSignature(r, size)
	if err != nil {
		return nil, err
	}
	section, err := readModinfo(r, elfSize)
	if err != nil {
		return nil, err
	}
	fields, _, err := ParseFields(section)
	if err != nil {
		return nil, fmt.Errorf("parse .modinfo section: %w", err)
	}
	info := infoFromFields(fields)
	info.Signature = sig
	return info, nil
}

// readModinfo returns the raw .modinfo section of the ELF file in the first
// size bytes of r, or an error when they are not ELF, there is no such
// section, or it is too large or cannot be read.
func readModinfo(r io.ReaderAt, size int64) ([]byte, error) {
	sr := io.NewSectionReader(r, 0, size)
	head := make([]byte, len(magicELF))
	n, err := sr.ReadAt(head, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read ELF header: %w", err)
	}
	head = head[:n]
	switch {
	case size == 0:
		return nil, errors.New("not an ELF file: empty")
	case string(head) == magicELF:
		return elfModinfo(sr)
	case detectCompression(head) != CompressionNone:
		return nil, fmt.Errorf("not an ELF file: %s-compressed data", detectCompression(head))
	default:
		return nil, fmt.Errorf("not an ELF file: starts with %q", head)
	}
}

// elfModinfo returns the contents of the .modinfo section of the ELF file
// r, or an error when the ELF headers are corrupt, there is no .modinfo
// section, it has no data in the file, it is larger than MaxModinfoSize, or
// it cannot be read.
func elfModinfo(r io.ReaderAt) (data []byte, err error) {
	// debug/elf is not hardened against hostile input and has panicked on
	// crafted files before (index out of range, bad slice bounds). Module
	// files can be corrupt, and the daemon must report that rather than
	// crash, so a panic inside debug/elf becomes an error. The recover
	// covers only this function so that bugs elsewhere in the package still
	// surface, in tests and fuzzing.
	defer func() {
		if p := recover(); p != nil {
			data, err = nil, fmt.Errorf("parse ELF: corrupt file (debug/elf panicked: %v)", p)
		}
	}()

	f, err := elf.NewFile(r)
	if err != nil {
		return nil, fmt.Errorf("parse ELF: %w", err)
	}
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, errors.New("no .modinfo section")
	}
	if sec.Type == elf.SHT_NOBITS {
		return nil, errors.New("read .modinfo section: section has no data in the file (SHT_NOBITS)")
	}
	if sec.Size > MaxModinfoSize {
		return nil, fmt.Errorf("read .modinfo section: size %d exceeds the %d-byte limit", sec.Size, MaxModinfoSize)
	}
	data, err = sec.Data()
	if err != nil {
		return nil, fmt.Errorf("read .modinfo section: %w", err)
	}
	return data, nil
}

// infoFromFields builds an Info from the parsed .modinfo entries. When a
// key that Info has a field for repeats, the first value wins.
func infoFromFields(fields map[string][]string) *Info {
	first := func(key string) string {
		if v := fields[key]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	info := &Info{
		Name:       first("name"),
		Version:    first("version"),
		Vermagic:   first("vermagic"),
		SrcVersion: first("srcversion"),
		License:    first("license"),
		Fields:     fields,
	}
	for _, v := range fields["depends"] {
		for _, dep := range strings.Split(v, ",") {
			if dep = strings.TrimSpace(dep); dep != "" {
				info.Depends = append(info.Depends, dep)
			}
		}
	}
	return info
}
