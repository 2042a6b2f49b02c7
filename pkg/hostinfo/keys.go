package hostinfo

import (
	"encoding/binary"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

const (
	procKeysPath = "/proc/keys"
	limitKeys    = 1 << 20
)

// The keyrings the kernel checks module signatures against. .machine (MOK
// keys, Linux 5.18+) is linked into .secondary_trusted_keys; linked
// keyrings are followed.
var moduleKeyrings = []string{".builtin_trusted_keys", ".secondary_trusted_keys", ".platform", ".machine"}

// TrustedKey is a public key the kernel holds for verifying signatures.
type TrustedKey struct {
	// Description is what the kernel calls the key: for an X.509
	// certificate, "<subject CN or O>: <key identifier in hex>", e.g.
	// "Debian Secure Boot CA: 6ccece7e4c6c0d1f6149f3dd27dfcc5cbb419ea1".
	Description string
	// Keyring is the trusted keyring holding it (.builtin_trusted_keys,
	// .secondary_trusted_keys or .platform), "" when that could not be
	// read (a host tree that is not this machine's own).
	Keyring string
}

// TrustedKeys lists the asymmetric keys in /proc/keys. On the machine's own
// root ("/"), each is placed in the module-verification keyring that holds
// it (read with keyctl), and keys in no such keyring are left out; under
// another root, whose keys this kernel cannot be asked about, every
// asymmetric key listed is returned with Keyring "". An unreadable or
// absent /proc/keys gives none.
func (h *Host) TrustedKeys() []TrustedKey {
	data, err := h.fs.ReadFile(procKeysPath, limitKeys)
	if err != nil {
		return nil
	}
	type entry struct {
		id          int32
		typ, detail string
	}
	var entries []entry
	for _, line := range strings.Split(string(data), "\n") {
		// <id> <flags> <usage> <timeout> <perm> <uid> <gid> <type> <description...>
		f := strings.Fields(line)
		if len(f) < 9 {
			continue
		}
		id, err := strconv.ParseUint(f[0], 16, 32)
		if err != nil {
			continue
		}
		rest := line[strings.Index(line, f[7])+len(f[7]):]
		entries = append(entries, entry{id: int32(id), typ: f[7], detail: strings.TrimSpace(rest)})
	}
	keyring := map[int32]string{}
	if h.fs.IsHost() {
		isKeyring := map[int32]bool{}
		for _, e := range entries {
			isKeyring[e.id] = e.typ == "keyring"
		}
		seen := map[int32]bool{}
		var walk func(id int32, name string)
		walk = func(id int32, name string) {
			if seen[id] {
				return
			}
			seen[id] = true
			for _, member := range keyringMembers(id) {
				if isKeyring[member] {
					walk(member, name)
				} else if keyring[member] == "" {
					keyring[member] = name
				}
			}
		}
		for _, e := range entries {
			name, _, _ := strings.Cut(e.detail, ":")
			if e.typ == "keyring" && slices.Contains(moduleKeyrings, name) {
				walk(e.id, name)
			}
		}
	}
	var out []TrustedKey
	for _, e := range entries {
		if !strings.HasPrefix(e.typ, "asymmetri") { // the column is 9 wide
			continue
		}
		k := TrustedKey{Description: keyDescription(e.detail), Keyring: keyring[e.id]}
		if h.fs.IsHost() && k.Keyring == "" {
			continue
		}
		out = append(out, k)
	}
	return out
}

// keyDescription is an asymmetric key's description without what the
// kernel appends after it: ": X509.rsa 1a2b3c4d []" and the like.
func keyDescription(detail string) string {
	for _, sub := range []string{": X509.", ": PKCS7", ": PKCS8", ": TPM"} {
		if i := strings.LastIndex(detail, sub); i > 0 {
			return detail[:i]
		}
	}
	return detail
}

// keyringMembers reads the key serials a keyring links (KEYCTL_READ); nil
// when it cannot be read.
func keyringMembers(id int32) []int32 {
	buf := make([]byte, 4096)
	n, err := unix.KeyctlBuffer(unix.KEYCTL_READ, int(id), buf, 0)
	if err != nil || n > len(buf) {
		return nil
	}
	var out []int32
	for i := 0; i+4 <= n; i += 4 {
		out = append(out, int32(binary.NativeEndian.Uint32(buf[i:])))
	}
	return out
}
