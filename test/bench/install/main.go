// Command install benchmarks installing a driver image: nvidia-driverd
// install against `crane export | tar -x && sync` on the same gzip image,
// and nvidia-driverd install of the image publish makes by default.
//
//	go run ./test/bench/install [-runs 5] [-bin bin/nvidia-driverd] [-scale 1] [-check]
//
// It generates a deterministic driver tree of about 700 MB (cached under
// ${XDG_CACHE_HOME:-$HOME/.cache}/nvidia-driverd/bench), publishes it twice
// with pkg/publish (gzip in 4 layers; the defaults), serves both images
// from go-containerregistry's registry on 127.0.0.1, installs each image
// -runs times into a sample Flatcar host root under the cache directory,
// and prints the medians with peak RSS. -check makes a missed target exit
// with status 1. See `make bench`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/publish"
	"github.com/nvidia-driverd/nvidia-driverd/test/hostfixture"
)

// craneVersion is the crane the baseline runs, from the Go module proxy.
const craneVersion = "v0.22.1"

// Targets.
const (
	targetGzip    = 1.7      // nvidia-driverd on the gzip image vs crane export | tar && sync
	targetDefault = 3.0      // nvidia-driverd on the default image vs the same baseline
	targetRSS     = 64 * mib // peak RSS of nvidia-driverd
)

// storeDir is the sample host's store.
const storeDir = "opt/nvidia"

type options struct {
	runs    int
	bin     string
	cache   string
	scale   float64
	check   bool
	verbose bool
}

func main() {
	if os.Getenv(spawnEnv) == "1" {
		os.Exit(spawn(os.Args[1:]))
	}
	var o options
	flag.IntVar(&o.runs, "runs", 5, "runs of each variant")
	flag.StringVar(&o.bin, "bin", "", "nvidia-driverd binary to measure (default: build bin/nvidia-driverd)")
	flag.StringVar(&o.cache, "cache", "", "cache directory (default ${XDG_CACHE_HOME:-$HOME/.cache}/nvidia-driverd/bench)")
	flag.Float64Var(&o.scale, "scale", 1, "multiply every file size of the generated tree by this")
	flag.BoolVar(&o.check, "check", false, "exit with status 1 when a target is missed")
	flag.BoolVar(&o.verbose, "v", false, "show the output of every run")
	flag.Parse()
	if o.runs < 1 || o.scale <= 0 || flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	pass, err := run(ctx, o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench install: %v\n", err)
		os.Exit(1)
	}
	if !pass && o.check {
		os.Exit(1)
	}
}

// run runs the benchmark and reports whether every target was met.
func run(ctx context.Context, o options) (bool, error) {
	root, err := moduleRoot()
	if err != nil {
		return false, err
	}
	if o.cache == "" {
		base := os.Getenv("XDG_CACHE_HOME")
		if base == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				return false, err
			}
			base = filepath.Join(home, ".cache")
		}
		o.cache = filepath.Join(base, "nvidia-driverd", "bench")
	}
	if err := os.MkdirAll(o.cache, 0o755); err != nil {
		return false, err
	}

	step := func(format string, args ...any) { fmt.Fprintf(os.Stderr, "bench install: "+format+"\n", args...) }
	if o.bin == "" {
		o.bin = filepath.Join(root, "bin", "nvidia-driverd")
		step("building %s", o.bin)
		if err := goCommand(root, nil, "build", "-trimpath", "-o", o.bin, "./cmd/nvidia-driverd"); err != nil {
			return false, err
		}
	}
	if o.bin, err = filepath.Abs(o.bin); err != nil {
		return false, err
	}
	crane := filepath.Join(o.cache, "bin", "crane")
	if _, err := os.Stat(crane); err != nil {
		step("installing crane %s into %s", craneVersion, filepath.Dir(crane))
		env := []string{"GOBIN=" + filepath.Dir(crane)}
		if err := goCommand(o.cache, env, "install", "github.com/google/go-containerregistry/cmd/crane@"+craneVersion); err != nil {
			return false, err
		}
	}

	// Everything the runs write lives under the cache directory, on one
	// disk file system, never a tmpfs.
	work := filepath.Join(o.cache, "work")
	if err := os.RemoveAll(work); err != nil {
		return false, err
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return false, err
	}
	defer os.RemoveAll(work)
	if onTmpfs(work) {
		return false, fmt.Errorf("%s is on a tmpfs; pass -cache on a disk file system", work)
	}

	reg, err := startRegistry()
	if err != nil {
		return false, err
	}
	defer reg.Close()
	host := filepath.Join(work, "host")
	kernel, err := makeHost(root, host, reg.host)
	if err != nil {
		return false, fmt.Errorf("lay out the sample host: %w", err)
	}

	start := time.Now()
	tree, generated, err := ensureTree(o.cache, kernel, o.scale)
	if err != nil {
		return false, err
	}
	if generated {
		step("generated %s in %.1f s", tree, time.Since(start).Seconds())
	}
	want, err := listTree(tree)
	if err != nil {
		return false, err
	}
	facts := factsOf(want)

	step("publishing the gzip and the default image to %s", reg.host)
	gz, def, err := publishBoth(ctx, tree, work, kernel, reg)
	if err != nil {
		return false, err
	}

	variants := []*variant{
		craneVariant("crane export | tar -x && sync  (gzip image)", crane, work, gz.ref()),
		driverdVariant("nvidia-driverd install  (gzip image)", o.bin, host, storeDir, gz.repo),
		driverdVariant("nvidia-driverd install  (default image)", o.bin, host, storeDir, def.repo),
	}
	step("installing %d times each", o.runs)
	if err := runAll(ctx, variants, o.runs, want, o.verbose); err != nil {
		return false, err
	}

	version, err := exec.Command(o.bin, "version").Output()
	if err != nil {
		return false, fmt.Errorf("%s version: %w", o.bin, err)
	}
	fmt.Println()
	fmt.Printf("%s; crane %s\n", strings.TrimSpace(string(version)), craneVersion)
	printFacts(os.Stdout, facts, gz, def, work)
	fmt.Println()
	return printTable(os.Stdout, variants, o.runs, def), nil
}

// publishBoth publishes the gzip baseline image (4 layers) and the
// default image at once.
func publishBoth(ctx context.Context, tree, work, kernel string, reg *loopbackRegistry) (gz, def *builtImage, err error) {
	type result struct {
		img *builtImage
		err error
	}
	gzc, defc := make(chan result, 1), make(chan result, 1)
	go func() {
		img, err := publishImage(ctx, tree, work, kernel, reg.repo("bench/gzip"), reg.host,
			publish.Options{Compression: publish.Gzip, LibraryLayers: 1})
		gzc <- result{img, err}
	}()
	go func() {
		img, err := publishImage(ctx, tree, work, kernel, reg.repo("bench/default"), reg.host, publish.Options{})
		defc <- result{img, err}
	}()
	g, d := <-gzc, <-defc
	if err := errors.Join(g.err, d.err); err != nil {
		return nil, nil, err
	}
	if n := len(g.img.layers); n != 4 {
		return nil, nil, fmt.Errorf("gzip image has %d layers, want 4", n)
	}
	return g.img, d.img, nil
}

// makeHost lays out the sample host at dir: Flatcar 3815.2.0 with a GPU,
// no driver loaded, an empty store, and a config naming the loopback
// registry as insecure. It returns the host's kernel release.
func makeHost(root, dir, registryHost string) (string, error) {
	cfg := "driver-version: " + driver + "\n" +
		"insecure-registries:\n  - " + registryHost + "\n" +
		"store: /" + storeDir + "\n"
	spec := hostfixture.Spec{Base: "flatcar", Flags: kernelFlags, Unload: true, Config: cfg}
	if err := hostfixture.Make(filepath.Join(root, "test/fixtures/hosts"), dir, spec); err != nil {
		return "", err
	}
	release, err := os.ReadFile(filepath.Join(dir, "proc/sys/kernel/osrelease"))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(release)), nil
}

// moduleRoot returns the directory of the main module's go.mod.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run from inside the nvidia-driverd module")
	}
	return filepath.Dir(mod), nil
}

// goCommand runs the go command in dir with extra environment.
func goCommand(dir string, env []string, args ...string) error {
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "CGO_ENABLED=0"), env...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

// onTmpfs reports whether dir is on a tmpfs.
func onTmpfs(dir string) bool {
	var st syscall.Statfs_t
	const tmpfsMagic = 0x01021994
	return syscall.Statfs(dir, &st) == nil && st.Type == tmpfsMagic
}

// printFacts describes the generated tree and the two images.
func printFacts(w io.Writer, f treeFacts, gz, def *builtImage, work string) {
	fmt.Fprintf(w, "driver tree: %.0f MB (%.0f MiB) in %d files and %d symlinks: lib64 %.0f %%, lib/modules %.0f MB, firmware %.0f MB, bin %.0f MB\n",
		float64(f.bytes)/1e6, float64(f.bytes)/mib, f.files, f.links,
		100*float64(f.parts["lib64"])/float64(f.bytes), float64(f.parts["lib/modules"])/1e6,
		float64(f.parts["firmware"])/1e6, float64(f.parts["bin"])/1e6)
	fmt.Fprintf(w, "gzip keeps %.1f %% of the file bytes, zstd %.1f %%\n",
		100*float64(gz.size())/float64(gz.fileBytes()), 100*float64(def.size())/float64(def.fileBytes()))
	for _, img := range []*builtImage{gz, def} {
		fmt.Fprintf(w, "%s: %s, %d layers, %.0f MB compressed (published in %.1f s)\n",
			img.ref(), img.compression(), len(img.layers), float64(img.size())/1e6, img.took.Seconds())
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "  layer\tfiles\tMB\tcompressed MB\t%\t")
		for _, l := range img.layers {
			fmt.Fprintf(tw, "  %s\t%d\t%.1f\t%.1f\t%.1f\t\n", l.Name, l.Files, float64(l.Bytes)/1e6, float64(l.Size)/1e6, 100*float64(l.Size)/float64(max(l.Bytes, 1)))
		}
		tw.Flush()
	}
	fmt.Fprintf(w, "installs write to %s (%s), %d CPUs\n", work, fsName(work), runtime.NumCPU())
}

// fsName names the file system type of dir, for the report.
func fsName(dir string) string {
	var st syscall.Statfs_t
	if syscall.Statfs(dir, &st) != nil {
		return "unknown file system"
	}
	switch st.Type {
	case 0xef53:
		return "ext4"
	case 0x58465342:
		return "xfs"
	case 0x9123683e:
		return "btrfs"
	case 0x01021994:
		return "tmpfs"
	case 0x794c7630:
		return "overlayfs"
	}
	return fmt.Sprintf("file system type %#x", st.Type)
}

// printTable prints the results and the target checks, and reports
// whether every target was met.
func printTable(w io.Writer, variants []*variant, runs int, def *builtImage) bool {
	var base stats
	for _, v := range variants {
		if v.isBaseline {
			base = summarize(v.samples)
		}
	}
	fmt.Fprintf(w, "install, medians of %d runs\n", runs)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "variant\tmedian s\tmin s\tmax s\tpeak RSS MiB\tspeed-up")
	all := map[*variant]stats{}
	for _, v := range variants {
		s := summarize(v.samples)
		all[v] = s
		fmt.Fprintf(tw, "%s\t%.2f\t%.2f\t%.2f\t%.1f\t%.2f×\n", v.name, s.median.Seconds(), s.min.Seconds(), s.max.Seconds(),
			float64(s.medianRSS)/mib, base.median.Seconds()/s.median.Seconds())
	}
	tw.Flush()
	fmt.Fprintln(w)

	pass := true
	verdict := func(ok bool, format string, args ...any) {
		word := "PASS"
		if !ok {
			word, pass = "FAIL", false
		}
		fmt.Fprintf(w, "%s  "+format+"\n", append([]any{word}, args...)...)
	}
	gzs, defs := all[variants[1]], all[variants[2]]
	up := base.median.Seconds() / gzs.median.Seconds()
	verdict(up >= targetGzip, "nvidia-driverd on the gzip image: %.2f× faster than crane export | tar -x && sync (target ≥ %.1f×)", up, targetGzip)
	up = base.median.Seconds() / defs.median.Seconds()
	verdict(up >= targetDefault, "nvidia-driverd on the default image (%s, %d layers): %.2f× faster than crane export | tar -x && sync on the gzip image (target ≥ %.1f×)",
		def.compression(), len(def.layers), up, targetDefault)
	var peak int64
	for _, v := range variants {
		if v.checkRSS {
			peak = max(peak, all[v].maxRSS)
		}
	}
	verdict(peak < targetRSS, "nvidia-driverd peak RSS at most %.1f MiB over every run (target < %d MiB)", float64(peak)/mib, targetRSS/mib)
	return pass
}
