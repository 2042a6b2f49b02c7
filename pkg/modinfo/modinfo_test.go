package modinfo_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/modinfo"
	"github.com/nvidia-driverd/nvidia-driverd/test/kofixture"
)

const testVermagic = "6.1.0-56-amd64 SMP preempt mod_unload modversions "

// nvidiaFields are the fields of an NVIDIA-like module with a few repeated
// keys, as real modules have.
func nvidiaFields() []string {
	return append(kofixture.Standard("nvidia", "550.54.14", testVermagic, "drm", "i2c_core"),
		"alias=pci:v000010DEd*sv*sd*bc03sc00i00*",
		"parm=NVreg_EnableMSI:int",
		"alias=pci:v000010DEd*sv*sd*bc03sc02i00*",
		"retpoline=Y",
	)
}

// readErr calls modinfo.Read on path, which must fail, and returns the
// error's message after checking that it names path.
func readErr(t *testing.T, path string) string {
	t.Helper()
	info, err := modinfo.Read(path)
	if err == nil {
		t.Fatalf("Read(%s) = %+v, want an error", path, info)
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "read modinfo: "+path+": ") {
		t.Errorf("Read(%s) error %q does not start with %q", path, msg, "read modinfo: "+path+": ")
	}
	return msg
}

func mustRead(t *testing.T, path string) *modinfo.Info {
	t.Helper()
	info, err := modinfo.Read(path)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	return info
}

func TestRead(t *testing.T) {
	t.Parallel()
	t.Run("a standard module reports every field and splits depends", func(t *testing.T) {
		path := kofixture.Build(t, t.TempDir(), kofixture.Module{Name: "nvidia", Fields: nvidiaFields()})
		info := mustRead(t, path)

		if info.Path != path {
			t.Errorf("Path = %q, want %q", info.Path, path)
		}
		std := kofixture.Standard("nvidia", "550.54.14", testVermagic)
		srcversion := strings.TrimPrefix(std[2], "srcversion=")
		for _, c := range []struct{ field, got, want string }{
			{"Name", info.Name, "nvidia"},
			{"Version", info.Version, "550.54.14"},
			{"Vermagic", info.Vermagic, testVermagic},
			{"SrcVersion", info.SrcVersion, srcversion},
			{"License", info.License, "Dual MIT/GPL"},
			{"Compression", info.Compression, ""},
		} {
			if c.got != c.want {
				t.Errorf("%s = %q, want %q", c.field, c.got, c.want)
			}
		}
		if want := []string{"drm", "i2c_core"}; !slices.Equal(info.Depends, want) {
			t.Errorf("Depends = %q, want %q", info.Depends, want)
		}
		if info.Signature != nil {
			t.Errorf("Signature = %+v, want nil for an unsigned module", info.Signature)
		}
		wantAliases := []string{"pci:v000010DEd*sv*sd*bc03sc00i00*", "pci:v000010DEd*sv*sd*bc03sc02i00*"}
		if got := info.Fields["alias"]; !slices.Equal(got, wantAliases) {
			t.Errorf(`Fields["alias"] = %q, want %q`, got, wantAliases)
		}
		if got := info.Fields["parm"]; !slices.Equal(got, []string{"NVreg_EnableMSI:int"}) {
			t.Errorf(`Fields["parm"] = %q`, got)
		}
		if len(info.Fields) != 9 {
			t.Errorf("Fields has %d keys, want 9: %q", len(info.Fields), info.Fields)
		}
	})

	t.Run("an empty depends field gives nil Depends", func(t *testing.T) {
		fields := kofixture.Standard("nvidia_uvm", "550.54.14", testVermagic)
		path := kofixture.Build(t, t.TempDir(), kofixture.Module{Name: "nvidia-uvm", Fields: fields})
		info := mustRead(t, path)
		if info.Depends != nil {
			t.Errorf("Depends = %#v, want nil", info.Depends)
		}
		if got := info.Fields["depends"]; !slices.Equal(got, []string{""}) {
			t.Errorf(`Fields["depends"] = %q, want [""]`, got)
		}
	})

	t.Run("depends drops empty entries", func(t *testing.T) {
		path := kofixture.Build(t, t.TempDir(), kofixture.Module{Name: "m", Fields: []string{"depends=,a,,b,"}})
		if got := mustRead(t, path).Depends; !slices.Equal(got, []string{"a", "b"}) {
			t.Errorf("Depends = %q, want [a b]", got)
		}
	})

	t.Run("a signed module reports its signature and its fields", func(t *testing.T) {
		path := kofixture.Build(t, t.TempDir(), kofixture.Module{Name: "nvidia", Fields: nvidiaFields(), Sign: true})
		info := mustRead(t, path)
		if info.Name != "nvidia" || info.Vermagic != testVermagic {
			t.Errorf("Name, Vermagic = %q, %q; want nvidia, %q", info.Name, info.Vermagic, testVermagic)
		}
		sig := info.Signature
		if sig == nil {
			t.Fatal("Signature = nil, want one")
		}
		skid := sha256.Sum256([]byte("kofixture signing key")) // what kofixture names its signer by
		want := modinfo.Signature{Algorithm: "rsa", Hash: "sha256", IDType: "pkcs7", Length: sig.Length, KeyID: hex.EncodeToString(skid[:20])}
		if *sig != want {
			t.Errorf("Signature = %+v, want %+v", *sig, want)
		}
		if sig.Length < 256 {
			t.Errorf("Signature.Length = %d, want the PKCS#7 blob's length (over 256)", sig.Length)
		}
	})

	for _, c := range []struct{ compress, suffix string }{
		{"xz", ".ko.xz"},
		{"zstd", ".ko.zst"},
		{"gzip", ".ko.gz"},
	} {
		t.Run("a "+c.compress+"-compressed module is decompressed and parsed", func(t *testing.T) {
			path := kofixture.Build(t, t.TempDir(), kofixture.Module{Name: "nvidia-drm", Fields: nvidiaFields(), Sign: true, Compress: c.compress})
			if !strings.HasSuffix(path, c.suffix) {
				t.Errorf("kofixture built %s, want suffix %s", path, c.suffix)
			}
			info := mustRead(t, path)
			if info.Compression != c.compress {
				t.Errorf("Compression = %q, want %q", info.Compression, c.compress)
			}
			if info.Name != "nvidia" || info.Version != "550.54.14" || !slices.Equal(info.Depends, []string{"drm", "i2c_core"}) {
				t.Errorf("Name, Version, Depends = %q, %q, %q", info.Name, info.Version, info.Depends)
			}
			if info.Signature == nil || info.Signature.IDType != "pkcs7" {
				t.Errorf("Signature = %+v, want a pkcs7 one", info.Signature)
			}
		})

		t.Run("ReadPlain refuses a "+c.compress+"-compressed module without decompressing it", func(t *testing.T) {
			path := kofixture.Build(t, t.TempDir(), kofixture.Module{Name: "nvidia", Fields: nvidiaFields(), Compress: c.compress})
			_, err := modinfo.ReadPlain(path)
			if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), c.compress+"-compressed module where a plain .ko is required") {
				t.Fatalf("ReadPlain = %v", err)
			}
		})

		t.Run("a "+c.compress+"-compressed module named .ko is detected by content", func(t *testing.T) {
			dir := t.TempDir()
			built := kofixture.Build(t, dir, kofixture.Module{Name: "x", Fields: []string{"license=GPL"}, Compress: c.compress})
			path := filepath.Join(dir, "misnamed-mod.ko")
			if err := os.Rename(built, path); err != nil {
				t.Fatal(err)
			}
			info := mustRead(t, path)
			if info.Compression != c.compress || info.License != "GPL" {
				t.Errorf("Compression, License = %q, %q; want %q, GPL", info.Compression, info.License, c.compress)
			}
			if info.Name != "misnamed_mod" {
				t.Errorf("Name = %q, want misnamed_mod", info.Name)
			}
		})

		t.Run("a truncated "+c.compress+" module is an error naming the file", func(t *testing.T) {
			dir := t.TempDir()
			built := kofixture.Build(t, dir, kofixture.Module{Name: "x", Fields: nvidiaFields(), Compress: c.compress})
			data, err := os.ReadFile(built)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "truncated.ko")
			writeFile(t, path, data[:len(data)/2])
			if msg := readErr(t, path); !strings.Contains(msg, "decompress "+c.compress) {
				t.Errorf("error %q does not mention %q", msg, "decompress "+c.compress)
			}
		})
	}

	t.Run("ReadPlain reads a plain module like Read", func(t *testing.T) {
		path := kofixture.Build(t, t.TempDir(), kofixture.Module{Name: "nvidia", Fields: nvidiaFields()})
		plain, err := modinfo.ReadPlain(path)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(plain, mustRead(t, path)) {
			t.Fatalf("ReadPlain and Read differ: %+v", plain)
		}
	})

	t.Run("a module without a .modinfo section is refused", func(t *testing.T) {
		path := kofixture.Build(t, t.TempDir(), kofixture.Module{Name: "bare"})
		if msg := readErr(t, path); !strings.HasSuffix(msg, "no .modinfo section") {
			t.Errorf("error %q does not end in %q", msg, "no .modinfo section")
		}
	})

	t.Run("an empty .modinfo section gives empty fields and a name from the file", func(t *testing.T) {
		path := kofixture.Build(t, t.TempDir(), kofixture.Module{Name: "empty-info", Fields: []string{}})
		info := mustRead(t, path)
		if info.Fields == nil || len(info.Fields) != 0 {
			t.Errorf("Fields = %#v, want an empty map", info.Fields)
		}
		if info.Name != "empty_info" {
			t.Errorf("Name = %q, want empty_info", info.Name)
		}
	})

	t.Run("a .modinfo section over the size limit is refused", func(t *testing.T) {
		big := "description=" + strings.Repeat("x", modinfo.MaxModinfoSize)
		path := kofixture.Build(t, t.TempDir(), kofixture.Module{Name: "big", Fields: []string{big}})
		if msg := readErr(t, path); !strings.Contains(msg, "exceeds the 1048576-byte limit") {
			t.Errorf("error %q does not mention the limit", msg)
		}
	})

	t.Run("the name falls back to the file name with dashes as underscores", func(t *testing.T) {
		for _, c := range []struct{ name, compress, want string }{
			{"nvidia-drm", "", "nvidia_drm"},
			{"nvidia-uvm", "xz", "nvidia_uvm"},
			{"nvidia-modeset", "zstd", "nvidia_modeset"},
		} {
			path := kofixture.Build(t, t.TempDir(), kofixture.Module{Name: c.name, Fields: []string{"license=GPL"}, Compress: c.compress})
			if got := mustRead(t, path).Name; got != c.want {
				t.Errorf("Read(%s).Name = %q, want %q", filepath.Base(path), got, c.want)
			}
		}
	})

	t.Run("the name= field wins over the file name", func(t *testing.T) {
		path := kofixture.Build(t, t.TempDir(), kofixture.Module{Name: "file-name", Fields: []string{"name=real_name"}})
		if got := mustRead(t, path).Name; got != "real_name" {
			t.Errorf("Name = %q, want real_name", got)
		}
	})

	t.Run("a .modinfo entry without '=' is an error naming its offset", func(t *testing.T) {
		path := kofixture.Build(t, t.TempDir(), kofixture.Module{Name: "bad", Fields: []string{"license=GPL", "garbage"}})
		msg := readErr(t, path)
		if want := `parse .modinfo section: entry at offset 12 has no '=': "garbage"`; !strings.HasSuffix(msg, want) {
			t.Errorf("error %q does not end in %q", msg, want)
		}
	})

	t.Run("hostile .modinfo bytes are kept as they are", func(t *testing.T) {
		path := kofixture.Build(t, t.TempDir(), kofixture.Module{Name: "odd", Fields: []string{"k=\xff\xfe=\x01", "k=", "\x80=v"}})
		info := mustRead(t, path)
		if got := info.Fields["k"]; !slices.Equal(got, []string{"\xff\xfe=\x01", ""}) {
			t.Errorf(`Fields["k"] = %q`, got)
		}
		if got := info.Fields["\x80"]; !slices.Equal(got, []string{"v"}) {
			t.Errorf(`Fields["\x80"] = %q`, got)
		}
	})
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestReadRejectsNonModules(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ko, err := os.ReadFile(kofixture.Build(t, dir, kofixture.Module{Name: "good", Fields: nvidiaFields()}))
	if err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		name string
		data []byte
		want string
	}{
		{"a text file is not ELF", []byte("hello, kernel\n"), `not an ELF file: starts with "hell"`},
		{"an empty file is not ELF", nil, "not an ELF file: empty"},
		{"a file of three bytes is not ELF", []byte("\x7fEL"), `not an ELF file: starts with "\x7fEL"`},
		{"a truncated ELF header is an error", ko[:20], "parse ELF: "},
		{"an ELF file cut before its section headers is an error", ko[:len(ko)/2], "parse ELF: "},
		{"bzip2 data is not ELF", []byte("BZh91AY&SY"), `not an ELF file: starts with "BZh9"`},
		{"gzip data that is not ELF inside is an error", gzipped(t, []byte("plain text")), "parse gzip-decompressed module: not an ELF file"},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(dir, "bad.ko")
			writeFile(t, path, c.data)
			if msg := readErr(t, path); !strings.Contains(msg, c.want) {
				t.Errorf("error %q does not contain %q", msg, c.want)
			}
		})
	}

	t.Run("a missing file is an fs.ErrNotExist naming the file", func(t *testing.T) {
		path := filepath.Join(dir, "missing.ko")
		readErr(t, path)
		if _, err := modinfo.Read(path); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Read error %v is not fs.ErrNotExist", err)
		}
	})

	t.Run("a directory is refused", func(t *testing.T) {
		if msg := readErr(t, dir); !strings.Contains(msg, "not a regular file") {
			t.Errorf("error %q does not say it is not a regular file", msg)
		}
	})
}

func TestSignatureTrailer(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ko, err := os.ReadFile(kofixture.Build(t, dir, kofixture.Module{Name: "m", Fields: nvidiaFields()}))
	if err != nil {
		t.Fatal(err)
	}
	trailer := func(module []byte, sig []byte, info []byte) []byte {
		out := append(bytes.Clone(module), sig...)
		out = append(out, info...)
		return append(out, kofixture.SignatureMagic...)
	}

	t.Run("an absurd sig_len is an error", func(t *testing.T) {
		path := filepath.Join(dir, "absurd.ko")
		writeFile(t, path, trailer(ko, nil, kofixture.SignatureInfo(2, 0xffffffff)))
		msg := readErr(t, path)
		if !strings.Contains(msg, "parse module signature: signature of 4294967295 bytes") {
			t.Errorf("error %q does not explain the sig_len", msg)
		}
	})

	t.Run("a sig_len one byte over the file is an error", func(t *testing.T) {
		path := filepath.Join(dir, "over.ko")
		writeFile(t, path, trailer(ko, nil, kofixture.SignatureInfo(2, uint32(len(ko)+1))))
		if msg := readErr(t, path); !strings.Contains(msg, "parse module signature") {
			t.Errorf("error %q does not mention the signature", msg)
		}
	})

	t.Run("a trailer without room for struct module_signature is an error", func(t *testing.T) {
		path := filepath.Join(dir, "short.ko")
		writeFile(t, path, []byte("abc"+kofixture.SignatureMagic))
		if msg := readErr(t, path); !strings.Contains(msg, "too short for struct module_signature") {
			t.Errorf("error %q does not say the file is too short", msg)
		}
	})

	t.Run("a non-PKCS#7 signature reports the struct's algorithms", func(t *testing.T) {
		// Legacy x509 layout: signer name, key ID, signature.
		info := []byte{1, 4, 1, 6, 3, 0, 0, 0, 0, 0, 0, 5}
		path := filepath.Join(dir, "legacy.ko")
		writeFile(t, path, trailer(ko, []byte("signerkeyabcde"), info))
		got := mustRead(t, path).Signature
		want := &modinfo.Signature{Algorithm: "rsa", Hash: "sha256", IDType: "x509", SignerLen: 6, KeyIDLen: 3, Length: 5}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("Signature = %+v, want %+v", got, want)
		}
	})

	t.Run("an unparsable PKCS#7 blob leaves the algorithms empty", func(t *testing.T) {
		path := filepath.Join(dir, "junk-pkcs7.ko")
		writeFile(t, path, trailer(ko, []byte("not DER"), kofixture.SignatureInfo(2, 7)))
		got := mustRead(t, path).Signature
		want := &modinfo.Signature{IDType: "pkcs7", Length: 7}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("Signature = %+v, want %+v", got, want)
		}
	})

	t.Run("an unknown id_type is reported, not refused", func(t *testing.T) {
		path := filepath.Join(dir, "unknown-id.ko")
		writeFile(t, path, trailer(ko, nil, kofixture.SignatureInfo(9, 0)))
		if got := mustRead(t, path).Signature.IDType; got != "unknown(9)" {
			t.Errorf("IDType = %q, want unknown(9)", got)
		}
	})
}

func TestParse(t *testing.T) {
	t.Parallel()
	path := kofixture.Build(t, t.TempDir(), kofixture.Module{Name: "no-name", Fields: []string{"license=GPL"}, Sign: true})
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("parsing bytes leaves Path, Name and Compression empty", func(t *testing.T) {
		info, err := modinfo.Parse(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		if info.Path != "" || info.Name != "" || info.Compression != "" {
			t.Errorf("Path, Name, Compression = %q, %q, %q; want all empty", info.Path, info.Name, info.Compression)
		}
		if info.License != "GPL" || info.Signature == nil {
			t.Errorf("License, Signature = %q, %v; want GPL and a signature", info.License, info.Signature)
		}
	})

	t.Run("compressed bytes are refused", func(t *testing.T) {
		gz := gzipped(t, data)
		_, err := modinfo.Parse(bytes.NewReader(gz), int64(len(gz)))
		if err == nil || err.Error() != "not an ELF file: gzip-compressed data" {
			t.Errorf("Parse error = %v, want not an ELF file: gzip-compressed data", err)
		}
	})

	t.Run("a negative size is an error", func(t *testing.T) {
		if _, err := modinfo.Parse(bytes.NewReader(data), -1); err == nil {
			t.Error("Parse with size -1 succeeded")
		}
	})
}
