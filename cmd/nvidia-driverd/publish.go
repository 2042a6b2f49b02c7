package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostfs"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/engine"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/publish"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/source"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/store"
)

type publishFlags struct {
	from, osID, osVersion, kernel, driver, layoutDir, compression, mtime string
	libraryLayers                                                        int
}

func newPublishCommand(g *globals) *cobra.Command {
	var f publishFlags
	cmd := &cobra.Command{
		Use:   "publish --from DIR --os ID --os-version V --kernel-release K [--driver D] (REF | --oci-layout DIR NAME)",
		Short: "Build a driver image from a driver tree and push it, without Docker",
		Long: `Build the driver image for one OS version from a driver tree (bin/, lib64/,
lib/modules/<kernel-release>/, firmware/, etc/modprobe.d/; see
docs/image-format.md) and push it to a registry as REF
(registry/repository:tag), or store it in an OCI layout directory under
NAME. The digest is printed on stdout.

Every .ko under lib/modules/<kernel-release>/ must carry that kernel's
vermagic and the configured modules must all be there; otherwise nothing is
published. --driver defaults to the version in nvidia.ko. Registry
credentials come from the Docker config ($DOCKER_CONFIG), as for fetching.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := signalContext()
			defer cancel()
			return g.publish(ctx, f, args[0])
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.from, "from", "", "driver tree to publish (required)")
	fl.StringVar(&f.osID, "os", "flatcar", "os-release ID the image is for")
	fl.StringVar(&f.osVersion, "os-version", "", "OS version the image is for (required)")
	fl.StringVar(&f.kernel, "kernel-release", "", "kernel release the modules are built for (required)")
	fl.StringVar(&f.driver, "driver", "", "driver version (default: nvidia.ko's version)")
	fl.StringVar(&f.layoutDir, "oci-layout", "", "write to this OCI layout directory instead of a registry")
	fl.StringVar(&f.compression, "compression", string(publish.Zstd), "layer compression: zstd (fastest to install) or gzip")
	fl.IntVar(&f.libraryLayers, "library-layers", 0, "layers lib64/ is split into, so installs unpack on every core (default 4)")
	fl.StringVar(&f.mtime, "mtime", "", "timestamp of every entry, Unix seconds (default $SOURCE_DATE_EPOCH or 0)")
	return cmd
}

func (g *globals) publish(ctx context.Context, f publishFlags, ref string) error {
	if f.from == "" || f.osVersion == "" || f.kernel == "" {
		return usageError{errors.New("--from, --os-version and --kernel-release are required")}
	}
	mtime, err := publishTime(f.mtime)
	if err != nil {
		return usageError{err}
	}
	cfg := g.cfg.Config
	opts, err := engine.SourceOptions(cfg)
	if err != nil {
		return usageError{err}
	}

	// Check the modules before building anything.
	from, err := filepath.Abs(f.from)
	if err != nil {
		return err
	}
	local, err := hostfs.Open("/")
	if err != nil {
		return err
	}
	defer local.Close()
	tree := store.ReadTree(local, from, f.driver, f.osVersion)
	fit := engine.Judge(tree, engine.Kernel{Release: f.kernel}, cfg.Modules)
	if !fit.Matches {
		return fmt.Errorf("publish %s: %s", f.from, fit.Problem)
	}
	driver := f.driver
	if driver == "" {
		driver = tree.ModuleVersion("nvidia", f.kernel)
		if driver == "" {
			return usageError{errors.New("nvidia.ko has no version; pass --driver")}
		}
	}

	built, err := publish.Build(from, publish.Options{
		Labels: map[string]string{
			publish.LabelDriver: driver, publish.LabelOSID: f.osID, publish.LabelOSVer: f.osVersion,
			publish.LabelKernel: f.kernel, publish.LabelVermagic: fit.Vermagic,
		},
		Compression: publish.Compression(f.compression), LibraryLayers: f.libraryLayers,
		Platform: opts.Platform, MTime: mtime,
	})
	if err != nil {
		return err
	}
	defer built.Close()
	for _, l := range built.Layers {
		g.log.Info("layer built", zap.String("layer", l.Name), zap.Int("files", l.Files),
			zap.Int64("bytes", l.Bytes), zap.Int64("compressed", l.Size))
	}

	var digest v1.Hash
	if f.layoutDir != "" {
		digest, err = source.WriteLayout(f.layoutDir, ref, built.Image)
	} else {
		digest, err = pushTo(ctx, ref, built.Image, opts)
	}
	if err != nil {
		return err
	}
	fmt.Fprintln(g.stdout, digest.String())
	return nil
}

// pushTo pushes img to ref, a full registry/repository:tag reference.
func pushTo(ctx context.Context, ref string, img v1.Image, opts source.Options) (v1.Hash, error) {
	tag, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return v1.Hash{}, usageError{fmt.Errorf("reference %q: want registry/repository:tag: %w", ref, err)}
	}
	opts.Mirrors = nil
	reg, err := source.NewRegistry(tag.Context().String(), opts)
	if err != nil {
		return v1.Hash{}, err
	}
	return reg.Push(ctx, tag.TagStr(), img)
}

func publishTime(flag string) (time.Time, error) {
	s := flag
	if s == "" {
		s = os.Getenv("SOURCE_DATE_EPOCH")
	}
	if s == "" {
		return time.Unix(0, 0), nil
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("--mtime %q: want Unix seconds", s)
	}
	return time.Unix(n, 0), nil
}
