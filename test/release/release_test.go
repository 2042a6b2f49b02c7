// Package release checks what make release produces: the same bytes from
// the same commit, static binaries for both architectures, sums that
// match, an image index of both platforms, and an SBOM.
package release

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/nvidia-driverd/nvidia-driverd/test/needs"
)

func release(t *testing.T, dir string) {
	t.Helper()
	cmd := exec.Command("make", "-C", "../..", "release", "RELEASE_DIR="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make release: %v\n%s", err, out)
	}
}

func TestReleaseIsReproducible(t *testing.T) {
	needs.System(t, "make release, twice")
	a, b := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	release(t, a)
	release(t, b)

	files := map[string][]byte{}
	err := filepath.WalkDir(a, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(a, p)
		da, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		db, err := os.ReadFile(filepath.Join(b, rel))
		if err != nil {
			t.Errorf("the second release lacks %s", rel)
			return nil
		}
		if !bytes.Equal(da, db) {
			t.Errorf("%s differs between two releases of the same commit", rel)
		}
		files[rel] = da
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// SHA256SUMS names every artifact, with its sum.
	sums := string(files["SHA256SUMS"])
	for _, name := range []string{"nvidia-driverd-linux-amd64", "nvidia-driverd-linux-arm64",
		"nvidia-driverd-linux-amd64.cdx.json", "nvidia-driverd-linux-arm64.cdx.json", "image/index.json"} {
		sum := sha256.Sum256(files[name])
		if !strings.Contains(sums, hex.EncodeToString(sum[:])+"  "+name+"\n") {
			t.Errorf("SHA256SUMS has no right sum for %s:\n%s", name, sums)
		}
	}
	// Static binaries, one per architecture.
	for name, machine := range map[string]elf.Machine{"nvidia-driverd-linux-amd64": elf.EM_X86_64, "nvidia-driverd-linux-arm64": elf.EM_AARCH64} {
		f, err := elf.NewFile(bytes.NewReader(files[name]))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if f.Machine != machine {
			t.Errorf("%s is for %s", name, f.Machine)
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("%s is dynamically linked", name)
			}
		}
	}
	// One image index, an image per platform.
	p, err := layout.FromPath(filepath.Join(a, "image"))
	if err != nil {
		t.Fatal(err)
	}
	root, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	rm, err := root.IndexManifest()
	if err != nil || len(rm.Manifests) != 1 {
		t.Fatalf("layout index %+v, %v", rm, err)
	}
	idx, err := root.ImageIndex(rm.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var platforms []string
	for _, m := range im.Manifests {
		platforms = append(platforms, m.Platform.String())
	}
	if strings.Join(platforms, " ") != "linux/amd64 linux/arm64" {
		t.Errorf("the index has %q", platforms)
	}
	if got := strings.TrimSpace(string(files["image.digest"])); got != rm.Manifests[0].Digest.String() {
		t.Errorf("image.digest says %s, the layout holds %s", got, rm.Manifests[0].Digest)
	}
	// A CycloneDX SBOM per binary, naming the Go dependencies.
	for _, arch := range []string{"amd64", "arm64"} {
		var sbom struct {
			BOMFormat  string `json:"bomFormat"`
			Components []struct {
				Name, Version string
			} `json:"components"`
			Metadata struct {
				Component struct {
					Properties []struct{ Name, Value string } `json:"properties"`
				} `json:"component"`
			} `json:"metadata"`
		}
		name := "nvidia-driverd-linux-" + arch + ".cdx.json"
		if err := json.Unmarshal(files[name], &sbom); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		names := map[string]bool{}
		for _, c := range sbom.Components {
			names[c.Name] = true
		}
		if sbom.BOMFormat != "CycloneDX" || !names["github.com/google/go-containerregistry"] || !names["go.uber.org/zap"] {
			t.Errorf("%s: %s with %d components: %v", name, sbom.BOMFormat, len(sbom.Components), names)
		}
		if !strings.Contains(fmt.Sprint(sbom.Metadata.Component.Properties), arch) {
			t.Errorf("%s does not name GOARCH %s: %v", name, arch, sbom.Metadata.Component.Properties)
		}
	}
}
