// Command image builds nvidia-driverd's own container image, for the
// DaemonSet in deploy/kubernetes, without a Docker daemon.
//
// The image has one layer: the static binary at /usr/local/bin, and
// optionally a static ldconfig (pkg/libs runs `ldconfig -r /rootfs` from
// the container's PATH) and a CA bundle for registries reached over TLS.
// Every entry has a fixed owner (root), mode and mtime, so the same inputs
// built with the same Go toolchain give the same digest.
//
//	go run ./deploy/image --binary bin/nvidia-driverd --oci-layout bin/image
//	go run ./deploy/image --binary bin/nvidia-driverd --push registry.example.com/nvidia-driverd:v1
//	go run ./deploy/image --binary amd64.bin --binary arm64.bin --oci-layout bin/release/image
//
// With --binary given more than once (one per architecture, as `make
// release` builds them) the result is an image index of one image per
// platform; --ldconfig goes into the image of its own architecture only
// (an image without one runs the host's, see PATH).
//
// It prints the image (or index) digest on stdout. `make image` and `make
// release` run it.
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/source"
)

// Paths inside the image.
const (
	BinaryPath   = "/usr/local/bin/nvidia-driverd"
	LdconfigPath = "/usr/local/sbin/ldconfig"
	CAPath       = "/etc/ssl/certs/ca-certificates.crt" // one of the files Go's crypto/x509 reads
	// PATH puts the image's own directories first. The host's sbin under
	// /rootfs comes last, so that an image built without --ldconfig runs
	// the host's ldconfig (which must then be a static binary, as glibc
	// builds it; Ubuntu's is a shell script and will not run here).
	PATH = "/usr/local/bin:/usr/local/sbin:/rootfs/usr/sbin:/rootfs/sbin"
)

// DefaultName is the reference `make image` builds and the DaemonSet in
// deploy/kubernetes runs.
const DefaultName = "ghcr.io/nvidia-driverd/nvidia-driverd:latest"

// DefaultSource is the org.opencontainers.image.source of the image.
const DefaultSource = "https://github.com/nvidia-driverd/nvidia-driverd"

// OCI annotation keys, used as manifest annotations and config labels.
const (
	AnnotationSource   = "org.opencontainers.image.source"
	AnnotationVersion  = "org.opencontainers.image.version"
	AnnotationRevision = "org.opencontainers.image.revision"
	AnnotationCreated  = "org.opencontainers.image.created"
	AnnotationTitle    = "org.opencontainers.image.title"
)

// Options say what goes into the image.
type Options struct {
	Binary   string    // the static nvidia-driverd binary (required)
	Ldconfig string    // a static ldconfig to include; "" for none
	CACerts  string    // a PEM CA bundle to include; "" for none
	Version  string    // org.opencontainers.image.version
	Revision string    // org.opencontainers.image.revision
	Source   string    // org.opencontainers.image.source; "" means DefaultSource
	MTime    time.Time // mtime of every entry and the creation time
}

func main() {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	cancel()
	os.Exit(code)
}

// listFlag is a flag that may be given more than once.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

// run builds the image as args say and returns the exit status: 0 when
// done, 1 when building, writing or pushing failed, 2 for bad flags.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		o                     Options
		mtime, layoutDir, ref string
		push                  string
		insecure, binaries    listFlag
	)
	fs.Var(&binaries, "binary", "a static nvidia-driverd binary (CGO_ENABLED=0); repeat for an index of several architectures (default bin/nvidia-driverd)")
	fs.StringVar(&o.Ldconfig, "ldconfig", "", "a static ldconfig to put at "+LdconfigPath+" (e.g. /sbin/ldconfig from a glibc host)")
	fs.StringVar(&o.CACerts, "ca-certificates", "", "a PEM CA bundle to put at "+CAPath)
	fs.StringVar(&o.Version, "version", "devel", "version label")
	fs.StringVar(&o.Revision, "revision", "", "revision label (a VCS commit)")
	fs.StringVar(&o.Source, "source", DefaultSource, "source label")
	fs.StringVar(&mtime, "mtime", "", "mtime of every entry, Unix seconds (default $SOURCE_DATE_EPOCH or 0)")
	fs.StringVar(&layoutDir, "oci-layout", "", "write the image to this OCI layout directory")
	fs.StringVar(&ref, "name", DefaultName, "the image's name in the OCI layout")
	fs.StringVar(&push, "push", "", "push the image to this registry/repository:tag")
	fs.Var(&insecure, "insecure", "registry host[:port] that may be reached over plain HTTP or unverified TLS (repeatable)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	usage := func(err error) int {
		fmt.Fprintf(stderr, "image: %v\n", err)
		return 2
	}
	if fs.NArg() > 0 {
		return usage(fmt.Errorf("unexpected arguments %q", fs.Args()))
	}
	if layoutDir == "" && push == "" {
		return usage(errors.New("want --oci-layout DIR, --push REF or both"))
	}
	t, err := unixTime(mtime)
	if err != nil {
		return usage(err)
	}
	o.MTime = t
	if len(binaries) == 0 {
		binaries = listFlag{"bin/nvidia-driverd"}
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "image: %v\n", err)
		return 1
	}

	// One binary makes an image, several an index of one per platform.
	var (
		digest v1.Hash
		write  func() error
		upload func() error
	)
	if len(binaries) == 1 {
		o.Binary = binaries[0]
		img, err := Build(o)
		if err == nil {
			digest, err = img.Digest()
		}
		if err != nil {
			return fail(err)
		}
		write = func() error { _, err := source.WriteLayout(layoutDir, ref, img); return err }
		upload = func() error { return Push(ctx, push, img, insecure) }
	} else {
		idx, err := BuildIndex(o, binaries)
		if err == nil {
			digest, err = idx.Digest()
		}
		if err != nil {
			return fail(err)
		}
		write = func() error { _, err := source.WriteLayoutIndex(layoutDir, ref, idx); return err }
		upload = func() error { return PushIndex(ctx, push, idx, insecure) }
	}
	if layoutDir != "" {
		if err := write(); err != nil {
			return fail(err)
		}
	}
	if push != "" {
		if err := upload(); err != nil {
			return fail(err)
		}
	}
	fmt.Fprintln(stdout, digest.String())
	return 0
}

// BuildIndex returns an image index of one image per binary, each built
// as Build does, with o's ldconfig only in the image of its architecture.
// It returns an error when a binary is refused or two are for the same
// architecture.
func BuildIndex(o Options, binaries []string) (v1.ImageIndex, error) {
	ldArch := ""
	if o.Ldconfig != "" {
		data, err := os.ReadFile(o.Ldconfig)
		if err != nil {
			return nil, err
		}
		if ldArch, err = staticArch(o.Ldconfig, data); err != nil {
			return nil, err
		}
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	seen := map[string]string{}
	for _, b := range binaries {
		data, err := os.ReadFile(b)
		if err != nil {
			return nil, err
		}
		arch, err := staticArch(b, data)
		if err != nil {
			return nil, err
		}
		if other, dup := seen[arch]; dup {
			return nil, fmt.Errorf("%s and %s are both for %s", other, b, arch)
		}
		seen[arch] = b
		po := o
		po.Binary = b
		if arch != ldArch {
			po.Ldconfig = ""
		}
		img, err := Build(po)
		if err != nil {
			return nil, err
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img,
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	return idx, nil
}

// PushIndex is Push for an image index.
func PushIndex(ctx context.Context, ref string, idx v1.ImageIndex, insecure []string) error {
	reg, tag, err := registryOf(ref, insecure)
	if err == nil {
		_, err = reg.PushIndex(ctx, tag, idx)
	}
	return err
}

// unixTime parses s, or $SOURCE_DATE_EPOCH when s is empty, as Unix
// seconds; neither set means the epoch.
func unixTime(s string) (time.Time, error) {
	if s == "" {
		s = os.Getenv("SOURCE_DATE_EPOCH")
	}
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n < 0 {
		return time.Time{}, fmt.Errorf("--mtime %q: want Unix seconds", s)
	}
	return time.Unix(n, 0).UTC(), nil
}

// Push pushes img to ref (registry/repository:tag) with the rules of the
// daemon's own registry client: verified TLS, except for hosts listed in
// insecure, which may use plain HTTP or an unverified certificate.
func Push(ctx context.Context, ref string, img v1.Image, insecure []string) error {
	reg, tag, err := registryOf(ref, insecure)
	if err == nil {
		_, err = reg.Push(ctx, tag, img)
	}
	return err
}

// registryOf is the registry client and tag for ref.
func registryOf(ref string, insecure []string) (*source.Registry, string, error) {
	tag, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return nil, "", fmt.Errorf("--push %q: want registry/repository:tag: %w", ref, err)
	}
	reg, err := source.NewRegistry(tag.Context().String(), source.Options{Insecure: insecure})
	return reg, tag.TagStr(), err
}

// file is one regular file of the layer.
type file struct {
	path string // inside the image, absolute
	mode int64
	data []byte
}

// Build returns the image. It returns an error when a file cannot be read,
// when the binary or ldconfig is not a static ELF executable, when they
// are built for different machines, or when the CA bundle holds no PEM
// certificate.
func Build(o Options) (v1.Image, error) {
	if o.Source == "" {
		o.Source = DefaultSource
	}
	bin, err := os.ReadFile(o.Binary)
	if err != nil {
		return nil, err
	}
	arch, err := staticArch(o.Binary, bin)
	if err != nil {
		return nil, err
	}
	files := []file{{BinaryPath, 0o755, bin}}
	if o.Ldconfig != "" {
		data, err := os.ReadFile(o.Ldconfig)
		if err != nil {
			return nil, err
		}
		a, err := staticArch(o.Ldconfig, data)
		if err != nil {
			return nil, err
		}
		if a != arch {
			return nil, fmt.Errorf("%s is for %s, %s for %s", o.Ldconfig, a, o.Binary, arch)
		}
		files = append(files, file{LdconfigPath, 0o755, data})
	}
	if o.CACerts != "" {
		data, err := os.ReadFile(o.CACerts)
		if err != nil {
			return nil, err
		}
		if !bytes.Contains(data, []byte("-----BEGIN CERTIFICATE-----")) {
			return nil, fmt.Errorf("%s holds no PEM certificate", o.CACerts)
		}
		files = append(files, file{CAPath, 0o644, data})
	}

	layerTar, err := tarLayer(files, o.MTime)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}

	created := v1.Time{Time: o.MTime}
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History:   v1.History{Created: created, CreatedBy: "deploy/image: nvidia-driverd " + o.Version},
	})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	labels := map[string]string{
		AnnotationTitle:    "nvidia-driverd",
		AnnotationSource:   o.Source,
		AnnotationVersion:  o.Version,
		AnnotationRevision: o.Revision,
		AnnotationCreated:  o.MTime.UTC().Format(time.RFC3339),
	}
	for k, v := range labels {
		if v == "" {
			delete(labels, k) // e.g. no revision outside a git checkout
		}
	}
	cf.OS, cf.Architecture = "linux", arch
	cf.Created = created
	cf.Config.Entrypoint = []string{BinaryPath}
	cf.Config.Cmd = []string{"run", "--root", "/rootfs"}
	cf.Config.Env = []string{"PATH=" + PATH}
	cf.Config.WorkingDir = "/"
	cf.Config.Labels = labels
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, err
	}
	return mutate.Annotations(img, labels).(v1.Image), nil
}

// tarLayer returns an uncompressed tar of files and their parent
// directories, in path order, owned by root, every entry with mtime.
func tarLayer(files []file, mtime time.Time) ([]byte, error) {
	type entry struct {
		hdr  *tar.Header
		data []byte
	}
	var entries []entry
	dirs := map[string]bool{}
	for _, f := range files {
		for d := path.Dir(f.path); d != "/"; d = path.Dir(d) {
			if !dirs[d] {
				dirs[d] = true
				entries = append(entries, entry{hdr: &tar.Header{Typeflag: tar.TypeDir, Name: d[1:] + "/", Mode: 0o755}})
			}
		}
		entries = append(entries, entry{
			hdr:  &tar.Header{Typeflag: tar.TypeReg, Name: f.path[1:], Mode: f.mode, Size: int64(len(f.data))},
			data: f.data,
		})
	}
	slices.SortFunc(entries, func(a, b entry) int { return strings.Compare(a.hdr.Name, b.hdr.Name) })

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		e.hdr.ModTime = mtime
		e.hdr.Uname, e.hdr.Gname = "root", "root"
		e.hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(e.hdr); err != nil {
			return nil, fmt.Errorf("write layer: %s: %w", e.hdr.Name, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, fmt.Errorf("write layer: %s: %w", e.hdr.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("write layer: %w", err)
	}
	return buf.Bytes(), nil
}

// machines maps ELF machines to OCI architectures.
var machines = map[elf.Machine]string{
	elf.EM_X86_64:  "amd64",
	elf.EM_AARCH64: "arm64",
	elf.EM_PPC64:   "ppc64le",
	elf.EM_S390:    "s390x",
	elf.EM_RISCV:   "riscv64",
}

// staticArch returns the OCI architecture of the ELF executable data
// (read from file). It returns an error when data is not an ELF
// executable for one of machines, or when it asks for a dynamic loader:
// the image has no C library.
func staticArch(file string, data []byte) (string, error) {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return "", fmt.Errorf("%s: not an ELF executable: %w", file, err)
	}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return "", fmt.Errorf("%s: ELF type %s, want an executable", file, f.Type)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", fmt.Errorf("%s is dynamically linked; the image has no C library (build with CGO_ENABLED=0)", file)
		}
	}
	arch, ok := machines[f.Machine]
	if !ok || f.Class != elf.ELFCLASS64 || f.ByteOrder != binary.LittleEndian && arch != "s390x" {
		return "", fmt.Errorf("%s: unsupported machine %s (%s, %s)", file, f.Machine, f.Class, f.ByteOrder)
	}
	return arch, nil
}
