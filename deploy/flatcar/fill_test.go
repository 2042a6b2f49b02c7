package flatcar

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coreos/ignition/v2/config/v3_3/types"
)

// TestFillRelease fills the Butane config from a release's SHA256SUMS, as
// a user does after make release, and checks that Ignition gets exactly
// that URL and hash and nothing else changed.
func TestFillRelease(t *testing.T) {
	dir := t.TempDir()
	bin := []byte("\x7fELF a release binary")
	sum := sha256.Sum256(bin)
	hexSum := hex.EncodeToString(sum[:])
	sums := hexSum + "  nvidia-driverd-linux-arm64\n" + strings.Repeat("1", 64) + "  nvidia-driverd-linux-amd64\n"
	if err := os.WriteFile(filepath.Join(dir, "SHA256SUMS"), []byte(sums), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "filled.bu")
	fill := func(args ...string) ([]byte, error) {
		return exec.Command("bash", append([]string{"fill-release.sh"}, args...)...).CombinedOutput()
	}
	if b, err := fill("https://example.org/v1.2.3/", "arm64", dir, out); err != nil {
		t.Fatalf("fill-release.sh: %v\n%s", err, b)
	}
	filled, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	ign, err := Translate(filled, "")
	if err != nil {
		t.Fatal(err)
	}
	cfg := parsedFrom(t, ign)
	var bin0 *types.File
	for i, f := range cfg.Storage.Files {
		if f.Path == binaryPath {
			bin0 = &cfg.Storage.Files[i]
		}
	}
	if bin0 == nil || bin0.Contents.Source == nil || *bin0.Contents.Source != "https://example.org/v1.2.3/nvidia-driverd-linux-arm64" {
		t.Fatalf("binary source %+v", bin0)
	}
	if h := bin0.Contents.Verification.Hash; h == nil || *h != "sha256-"+hexSum {
		t.Errorf("hash %v, want sha256-%s", h, hexSum)
	}
	orig, err := os.ReadFile(butaneFile)
	if err != nil {
		t.Fatal(err)
	}
	if a, b := strings.Count(string(orig), "\n"), strings.Count(string(filled), "\n"); a != b {
		t.Errorf("the filled config has %d lines, the template %d", b, a)
	}

	for _, bad := range [][]string{
		{"http://example.org/x", "amd64", dir, out},     // not https
		{"https://example.org/x", "riscv", dir, out},    // no such release binary
		{"https://example.org/x", "amd64", t.TempDir()}, // no SHA256SUMS
	} {
		if b, err := fill(bad...); err == nil {
			t.Errorf("fill-release.sh %q worked:\n%s", bad, b)
		}
	}
}
