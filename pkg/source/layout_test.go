package source

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/match"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/publish"
)

// blobFile is where an OCI layout keeps the blob d.
func blobFile(dir string, d v1.Hash) string {
	return filepath.Join(dir, "blobs", d.Algorithm, d.Hex)
}

// rewrite replaces a file's content with edit's result.
func rewrite(t *testing.T, path string, edit func([]byte) []byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	must(t, err)
	must(t, os.Chmod(path, 0o644))
	must(t, os.WriteFile(path, edit(b), 0o644))
}

// indexEntries returns the descriptors of a layout's index.json.
func indexEntries(t *testing.T, dir string) []v1.Descriptor {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	must(t, err)
	var im v1.IndexManifest
	must(t, json.Unmarshal(b, &im))
	return im.Manifests
}

func TestLayout(t *testing.T) {
	ctx := context.Background()
	amdImg, armImg := driverImage(t, amd64), driverImage(t, arm64)
	amdDigest := digestOf(t, amdImg)

	// written returns a fresh layout holding amdImg under testTag.
	written := func(t *testing.T) string {
		dir := filepath.Join(t.TempDir(), "layout")
		d, err := WriteLayout(dir, testTag, amdImg)
		must(t, err)
		if d != amdDigest {
			t.Fatalf("WriteLayout returned %s, want %s", d, amdDigest)
		}
		return dir
	}

	t.Run("an image written by WriteLayout is found by its tag with the same digest", func(t *testing.T) {
		dir := written(t)
		got, err := NewLayout(dir, Options{Platform: amd64}).Image(ctx, testTag)
		must(t, err)
		if got.Digest != amdDigest || got.Ref != dir+":"+testTag+"@"+amdDigest.String() || got.Source != "oci-layout "+dir {
			t.Fatalf("got %s, ref %s, source %q", got.Digest, got.Ref, got.Source)
		}
		if got.Labels[publish.LabelDriver] != "550.54.14" || len(got.Layers) != 4 {
			t.Fatalf("labels %v, %d layers", got.Labels, len(got.Layers))
		}
		must(t, readAll(got))
	})

	t.Run("a full reference name is found by its tag", func(t *testing.T) {
		dir := t.TempDir()
		_, err := WriteLayout(dir, "ghcr.io/example/nvidia-driver:"+testTag, amdImg)
		must(t, err)
		got, err := NewLayout(dir, Options{Platform: amd64}).Image(ctx, testTag)
		must(t, err)
		if got.Digest != amdDigest {
			t.Fatalf("got %s", got.Digest)
		}
	})

	t.Run("a missing tag is an error naming it", func(t *testing.T) {
		dir := written(t)
		_, err := NewLayout(dir, Options{Platform: amd64}).Image(ctx, "3815.2.0-999.99")
		wantErr(t, err, "3815.2.0-999.99", dir)
	})

	t.Run("a tag is not found by a suffix of it", func(t *testing.T) {
		dir := written(t)
		_, err := NewLayout(dir, Options{Platform: amd64}).Image(ctx, "550.54.14")
		wantErr(t, err, "550.54.14", "no image")
	})

	t.Run("a directory that is not there is an error naming it", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "unplugged")
		_, err := NewLayout(dir, Options{Platform: amd64}).Image(ctx, testTag)
		wantErr(t, err, dir)
	})

	t.Run("a layer blob with a flipped byte fails its digest check when read", func(t *testing.T) {
		dir := written(t)
		layer := layerDigests(t, amdImg)[3]
		rewrite(t, blobFile(dir, layer), func(b []byte) []byte { b[len(b)/2] ^= 1; return b })
		got, err := NewLayout(dir, Options{Platform: amd64}).Image(ctx, testTag)
		must(t, err)
		wantErr(t, readAll(got), layer.String(), "digest")
	})

	t.Run("a truncated layer blob fails when read", func(t *testing.T) {
		dir := written(t)
		layer := layerDigests(t, amdImg)[0]
		rewrite(t, blobFile(dir, layer), func(b []byte) []byte { return b[:len(b)-1] })
		got, err := NewLayout(dir, Options{Platform: amd64}).Image(ctx, testTag)
		must(t, err)
		wantErr(t, readAll(got), layer.String(), "truncated")
	})

	t.Run("a layer blob with bytes appended fails when read", func(t *testing.T) {
		dir := written(t)
		layer := layerDigests(t, amdImg)[0]
		rewrite(t, blobFile(dir, layer), func(b []byte) []byte { return append(b, 0) })
		got, err := NewLayout(dir, Options{Platform: amd64}).Image(ctx, testTag)
		must(t, err)
		wantErr(t, readAll(got), layer.String(), "more than")
	})

	t.Run("an edited manifest is refused", func(t *testing.T) {
		dir := written(t)
		rewrite(t, blobFile(dir, amdDigest), func(b []byte) []byte { return append(b, '\n') })
		_, err := NewLayout(dir, Options{Platform: amd64}).Image(ctx, testTag)
		wantErr(t, err, amdDigest.String(), "digest")
	})

	t.Run("an edited config is refused even when its tag is pinned", func(t *testing.T) {
		// An arm64 image whose config is edited to claim amd64: the
		// manifest, and so the pin, still match.
		dir := t.TempDir()
		armDigest, err := WriteLayout(dir, testTag, armImg)
		must(t, err)
		m, err := armImg.Manifest()
		must(t, err)
		rewrite(t, blobFile(dir, m.Config.Digest), func(b []byte) []byte {
			return bytes.ReplaceAll(b, []byte(`"arm64"`), []byte(`"amd64"`))
		})
		got, err := NewLayout(dir, Options{Platform: amd64, Digests: map[string]string{testTag: armDigest.String()}}).Image(ctx, testTag)
		if err == nil {
			t.Fatalf("accepted an arm64 image as %s", got.Labels["test.arch"])
		}
		wantErr(t, err, m.Config.Digest.String())
	})

	t.Run("a tag pinned to another digest is refused, naming both digests", func(t *testing.T) {
		dir := written(t)
		other := "sha256:" + strings.Repeat("cd", 32)
		_, err := NewLayout(dir, Options{Platform: amd64, Digests: map[string]string{testTag: other}}).Image(ctx, testTag)
		if !errors.Is(err, ErrRefused) {
			t.Fatalf("got %v, want ErrRefused", err)
		}
		wantErr(t, err, amdDigest.String(), other)
	})

	t.Run("a tag pinned to its digest is accepted", func(t *testing.T) {
		dir := written(t)
		got, err := NewLayout(dir, Options{Platform: amd64, Digests: map[string]string{testTag: amdDigest.String()}}).Image(ctx, testTag)
		must(t, err)
		if got.Digest != amdDigest {
			t.Fatalf("got %s", got.Digest)
		}
	})

	t.Run("an image for another platform is refused, naming both", func(t *testing.T) {
		dir := t.TempDir()
		_, err := WriteLayout(dir, testTag, armImg)
		must(t, err)
		_, err = NewLayout(dir, Options{Platform: amd64}).Image(ctx, testTag)
		if !errors.Is(err, ErrRefused) {
			t.Fatalf("got %v, want ErrRefused", err)
		}
		wantErr(t, err, "linux/arm64", "linux/amd64")
	})

	t.Run("writing the same name twice replaces the image", func(t *testing.T) {
		dir := written(t)
		_, err := WriteLayout(dir, "other", amdImg)
		must(t, err)
		armDigest, err := WriteLayout(dir, testTag, armImg)
		must(t, err)
		names := map[string]int{}
		for _, d := range indexEntries(t, dir) {
			names[d.Annotations[RefNameAnnotation]]++
			if d.Annotations[RefNameAnnotation] == testTag && d.Digest != armDigest {
				t.Errorf("%s names %s, want %s", testTag, d.Digest, armDigest)
			}
		}
		if len(names) != 2 || names[testTag] != 1 || names["other"] != 1 {
			t.Fatalf("index names %v, want %s and other once each", names, testTag)
		}
		got, err := NewLayout(dir, Options{Platform: arm64}).Image(ctx, testTag)
		must(t, err)
		if got.Digest != armDigest {
			t.Fatalf("got %s, want %s", got.Digest, armDigest)
		}
	})

	// withIndex returns a layout holding, under "multi", an index of
	// amdImg and armImg, and under "old" another amd64 image.
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: armImg, Descriptor: v1.Descriptor{Platform: &arm64}},
		mutate.IndexAddendum{Add: amdImg, Descriptor: v1.Descriptor{Platform: &amd64}},
	)
	idxDigest := digestOf(t, idx)
	old := mutate.Annotations(amdImg, map[string]string{publish.LabelDriver: "535.0.0"}).(v1.Image)
	oldDigest := digestOf(t, old)
	withIndex := func(t *testing.T) string {
		dir := t.TempDir()
		_, err := WriteLayout(dir, "old", old)
		must(t, err)
		p, err := layout.FromPath(dir)
		must(t, err)
		must(t, p.ReplaceIndex(idx, match.Annotation(RefNameAnnotation, "multi"),
			layout.WithAnnotations(map[string]string{RefNameAnnotation: "multi"})))
		return dir
	}

	for _, p := range []v1.Platform{amd64, arm64} {
		t.Run("an index resolves to the image for "+p.String(), func(t *testing.T) {
			got, err := NewLayout(withIndex(t), Options{Platform: p}).Image(ctx, "multi")
			must(t, err)
			if got.Digest != idxDigest || got.Labels["test.arch"] != p.Architecture {
				t.Fatalf("got %s for %s", got.Digest, got.Labels["test.arch"])
			}
			must(t, readAll(got))
		})
	}

	t.Run("an index without this platform is refused, naming it", func(t *testing.T) {
		_, err := NewLayout(withIndex(t), Options{Platform: v1.Platform{OS: "linux", Architecture: "riscv64"}}).Image(ctx, "multi")
		if !errors.Is(err, ErrRefused) {
			t.Fatalf("got %v, want ErrRefused", err)
		}
		wantErr(t, err, "linux/riscv64")
	})

	t.Run("an edited index blob is refused even when its tag is pinned", func(t *testing.T) {
		dir := withIndex(t)
		// Point the index's amd64 entry at the older image: index.json
		// still names the index by its original digest.
		rewrite(t, blobFile(dir, idxDigest), func(b []byte) []byte {
			var im v1.IndexManifest
			must(t, json.Unmarshal(b, &im))
			for i, d := range im.Manifests {
				if d.Platform.Architecture == "amd64" {
					sz, err := old.Size()
					must(t, err)
					im.Manifests[i].Digest, im.Manifests[i].Size = oldDigest, sz
				}
			}
			out, err := json.Marshal(im)
			must(t, err)
			return out
		})
		got, err := NewLayout(dir, Options{Platform: amd64, Digests: map[string]string{"multi": idxDigest.String()}}).Image(ctx, "multi")
		if err == nil {
			t.Fatalf("accepted the image of driver %s under a pin", got.Labels[publish.LabelDriver])
		}
		wantErr(t, err, idxDigest.String())
	})
}
