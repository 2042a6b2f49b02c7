package modinfo

import (
	"bytes"
	"compress/gzip"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

func TestDecompressLimit(t *testing.T) {
	t.Parallel()
	const limit = 5000
	payload := bytes.Repeat([]byte("x"), limit+1)
	compressed := map[string][]byte{}

	var xb bytes.Buffer
	xw, err := xz.WriterConfig{CheckSum: xz.CRC32}.NewWriter(&xb)
	if err != nil {
		t.Fatal(err)
	}
	xw.Write(payload)
	if err := xw.Close(); err != nil {
		t.Fatal(err)
	}
	compressed[CompressionXZ] = xb.Bytes()

	zw, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	compressed[CompressionZstd] = zw.EncodeAll(payload, nil)
	zw.Close()

	var gb bytes.Buffer
	gw := gzip.NewWriter(&gb)
	gw.Write(payload)
	if err := gw.Close(); err != nil {
		t.Fatal(err)
	}
	compressed[CompressionGzip] = gb.Bytes()

	for name, data := range compressed {
		t.Run("decompressing "+name+" past the limit is an error", func(t *testing.T) {
			_, err := decompress(bytes.NewReader(data), name, limit)
			want := "decompress " + name + ": decompressed size exceeds 5000 bytes"
			if err == nil || err.Error() != want {
				t.Errorf("decompress = %v, want %s", err, want)
			}
		})
		t.Run("decompressing "+name+" exactly up to the limit works", func(t *testing.T) {
			got, err := decompress(bytes.NewReader(data), name, limit+1)
			if err != nil || !bytes.Equal(got, payload) {
				t.Errorf("decompress = %d bytes, %v; want %d bytes", len(got), err, len(payload))
			}
		})
	}

	t.Run("an unknown compression is an error", func(t *testing.T) {
		if _, err := decompress(strings.NewReader(""), "lz4", limit); err == nil {
			t.Error("decompress lz4 succeeded")
		}
	})
}

func TestNameFromPath(t *testing.T) {
	t.Parallel()
	for path, want := range map[string]string{
		"/lib/modules/6.1.0/updates/dkms/nvidia.ko":     "nvidia",
		"nvidia-drm.ko.xz":                              "nvidia_drm",
		"dir-with-dash/nvidia-uvm.ko.zst":               "nvidia_uvm",
		"nvidia-peermem.ko.gz":                          "nvidia_peermem",
		"odd.name-x":                                    "odd.name_x",
		"twice.ko.ko":                                   "twice.ko",
		"/var/lib/nvidia-driverd/store/nvidia-fs.ko.xz": "nvidia_fs",
	} {
		t.Run("the module name of "+path+" is "+want, func(t *testing.T) {
			if got := nameFromPath(path); got != want {
				t.Errorf("nameFromPath(%q) = %q, want %q", path, got, want)
			}
		})
	}
}

func TestPKCS7Algorithms(t *testing.T) {
	t.Parallel()
	t.Run("garbage and truncated DER give empty names", func(t *testing.T) {
		for _, der := range [][]byte{nil, {0x30}, {0x30, 0x03, 0x06, 0x01, 0x00}, []byte("not DER at all")} {
			if a, h, s, k := pkcs7SignerInfo(der); a != "" || h != "" || s != "" || k != "" {
				t.Errorf("pkcs7SignerInfo(%x) = %q, %q, %q, %q; want empty", der, a, h, s, k)
			}
		}
	})
}

func TestModuleName(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{"nvidia.ko": "nvidia", "nvidia-uvm.ko": "nvidia_uvm", "fat.ko.xz": "fat", "x.ko.zst": "x", "x.ko.gz": "x"} {
		if got, ok := ModuleName(in); !ok || got != want {
			t.Errorf("ModuleName(%q) = %q, %v", in, got, ok)
		}
	}
	for _, in := range []string{".ko", "nvidia.o", "README", "nvidia.ko.bak"} {
		if _, ok := ModuleName(in); ok {
			t.Errorf("ModuleName(%q) accepted", in)
		}
	}
}

func TestSignerOf(t *testing.T) {
	issuer, err := asn1.Marshal(pkix.Name{CommonName: "e2e throwaway key", Organization: []string{"nvidia-driverd"}}.ToRDNSequence())
	if err != nil {
		t.Fatal(err)
	}
	ias, err := asn1.Marshal(struct {
		Issuer asn1.RawValue
		Serial *big.Int
	}{asn1.RawValue{FullBytes: issuer}, big.NewInt(0x1234abcd)})
	if err != nil {
		t.Fatal(err)
	}
	var sid asn1.RawValue
	if _, err := asn1.Unmarshal(ias, &sid); err != nil {
		t.Fatal(err)
	}
	if signer, id := signerOf(sid); signer != "e2e throwaway key" || id != "1234abcd" {
		t.Errorf("issuerAndSerialNumber: %q, %q", signer, id)
	}
	skid := asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, Bytes: []byte{0xde, 0xad}}
	if signer, id := signerOf(skid); signer != "" || id != "dead" {
		t.Errorf("subjectKeyIdentifier: %q, %q", signer, id)
	}
	if signer, id := signerOf(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagInteger}); signer != "" || id != "" {
		t.Errorf("junk: %q, %q", signer, id)
	}
}
