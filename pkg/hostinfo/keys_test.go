package hostinfo

import (
	"reflect"
	"testing"
)

func TestTrustedKeys(t *testing.T) {
	root := t.TempDir()
	writeTree(t, root, map[string]string{"proc/keys": "" +
		"21d912fa I------     1 perm 1f0b0000     0     0 keyring   .builtin_trusted_keys: 2\n" +
		"0f0ba0b6 I------     1 perm 1f030000     0     0 asymmetri Debian Secure Boot CA: 6ccece7e4c6c0d1f6149f3dd27dfcc5cbb419ea1: X509.rsa bb419ea1 []\n" +
		"1c4b2b7e I------     1 perm 1f030000     0     0 asymmetri Debian Secure Boot Signer 2022 - linux: 14011249c2675ea8e5148542202005810584b25f: X509.rsa 0584b25f []\n" +
		"3a10dd37 I------     1 perm 1f030000     0     0 keyring   .dns_resolver: empty\n" +
		"not a key line\n"})
	h, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	want := []TrustedKey{
		{Description: "Debian Secure Boot CA: 6ccece7e4c6c0d1f6149f3dd27dfcc5cbb419ea1"},
		{Description: "Debian Secure Boot Signer 2022 - linux: 14011249c2675ea8e5148542202005810584b25f"},
	}
	if got := h.TrustedKeys(); !reflect.DeepEqual(got, want) {
		t.Errorf("TrustedKeys = %+v\nwant %+v", got, want)
	}
	empty, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer empty.Close()
	if got := empty.TrustedKeys(); got != nil {
		t.Errorf("no /proc/keys: %+v", got)
	}
}
