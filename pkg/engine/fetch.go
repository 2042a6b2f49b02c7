package engine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/modinfo"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/publish"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/source"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/store"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/unpack"
)

// Target is the driver tree a fetch must produce.
type Target struct {
	Driver    string // driver version
	OSID      string // os-release ID the image must be for
	OSVersion string // OS version the image must be for
	TreeName  string // directory under <store>/<driver>/
	Tag       string // image tag
	Subdir    string // directory inside the image holding the tree; "" for its root
	// Kernel is the kernel the modules must match: the running one, or the
	// one a staged OS update boots.
	Kernel Kernel
}

// Fetcher downloads and installs driver trees into a store. The caller
// holds the store's lock.
type Fetcher struct {
	Source  source.Source
	Store   *store.Store
	Modules []string
	Limits  unpack.Limits
	// BadDigests are images that failed before; they are refused.
	BadDigests map[string]string
	// Timeout bounds one Fetch, resolving the image and every layer
	// included; 0 means none.
	Timeout time.Duration
	// Progress, when set, is called as compressed bytes arrive, with the
	// bytes so far and the total: from several goroutines, but one call
	// at a time.
	Progress func(done, total int64)
}

// Fetched describes a tree Fetch made available.
type Fetched struct {
	Tree   string // host path of the installed tree
	Image  string // reference with digest
	Digest string
	Reused bool  // an installed tree had the same digest: nothing downloaded
	Bytes  int64 // compressed bytes downloaded
	// KernelRelease is the kernel the modules were checked against: the
	// target's, or the one the image's label names for a prefetch.
	KernelRelease string
}

// Fetch makes the tree for t available in the store: it resolves the
// image, refuses it before downloading anything when its labels name
// another driver, OS or kernel or its digest failed before, reuses an
// installed tree with the same digest, and otherwise streams the layers
// into a staging directory, checks every kernel module against t.Kernel
// and commits the tree. It never touches `current`. On error nothing but
// staging leftovers (removed here, or by the next Clean) remains.
func (f *Fetcher) Fetch(ctx context.Context, t Target) (Fetched, error) {
	if f.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, f.Timeout, fmt.Errorf("fetch of %s took longer than fetch-timeout %v", t.Tag, f.Timeout))
		defer cancel()
	}
	out, err := f.fetch(ctx, t)
	if err != nil && context.Cause(ctx) != nil && ctx.Err() == context.DeadlineExceeded {
		err = fmt.Errorf("%w: %w", context.Cause(ctx), err)
	}
	return out, err
}

func (f *Fetcher) fetch(ctx context.Context, t Target) (Fetched, error) {
	img, err := f.Source.Image(ctx, t.Tag)
	if err != nil {
		return Fetched{}, err
	}
	out := Fetched{Image: img.Ref, Digest: img.Digest.String()}
	if t.Kernel.Release == "" {
		// A prefetch for an OS version names no kernel: the image does.
		if t.Kernel.Release = img.Labels[publish.LabelKernel]; t.Kernel.Release == "" {
			return out, fmt.Errorf("%s has no %s label; name the kernel it is for", img.Ref, publish.LabelKernel)
		}
	}
	out.KernelRelease = t.Kernel.Release
	if why, bad := f.BadDigests[out.Digest]; bad {
		return out, fmt.Errorf("%s failed before (%s); publish a fixed image", img.Ref, why)
	}
	if err := checkLabels(img, t); err != nil {
		return out, err
	}
	if tree, err := f.Store.FindDigest(out.Digest); err != nil {
		return out, err
	} else if tree != "" {
		out.Tree, out.Reused = tree, true
		return out, nil
	}

	st, err := f.Store.Stage(t.Driver + "-" + t.TreeName)
	if err != nil {
		return out, err
	}
	var stats unpack.Stats
	out.Bytes, stats, err = f.unpack(ctx, img, st, t.Subdir)
	if err != nil {
		return out, errors.Join(err, st.Discard())
	}
	fit, err := f.check(st, t)
	if err != nil {
		return out, errors.Join(err, st.Discard())
	}
	meta := store.Meta{Digest: out.Digest, Reference: img.Ref, Source: img.Source,
		InstalledAt: time.Now().UTC(), KernelRelease: t.Kernel.Release, Vermagic: fit.Vermagic,
		Files: stats.Files, Bytes: stats.Bytes}
	if out.Tree, err = st.Commit(t.Driver, t.TreeName, meta); err != nil {
		return out, err
	}
	return out, nil
}

// checkLabels refuses an image whose labels name another driver, OS or
// kernel, before a byte of it is downloaded. Labels an image lacks (older
// images, the original CoreOS installer's) are not required: the modules
// are checked after unpacking either way.
func checkLabels(img *source.Image, t Target) error {
	want := map[string]string{
		publish.LabelDriver: t.Driver,
		publish.LabelOSID:   t.OSID,
		publish.LabelOSVer:  t.OSVersion,
		publish.LabelKernel: t.Kernel.Release,
	}
	for label, w := range want {
		if got, ok := img.Labels[label]; ok && w != "" && got != w {
			return fmt.Errorf("%s is labelled %s=%s, this host needs %s", img.Ref, label, got, w)
		}
	}
	if vm, ok := img.Labels[publish.LabelVermagic]; ok {
		parsed, err := modinfo.ParseVermagic(vm)
		if err == nil {
			err = modinfo.Check(parsed, t.Kernel.Release, t.Kernel.Flags)
		}
		if err != nil {
			return fmt.Errorf("%s is labelled for another kernel: %w", img.Ref, err)
		}
	}
	return nil
}

// unpack streams the image's layers (only subdir of them, when set) into
// the staging directory and returns the compressed bytes read.
func (f *Fetcher) unpack(ctx context.Context, img *source.Image, st *store.Staging, subdir string) (int64, unpack.Stats, error) {
	root, err := st.Root()
	if err != nil {
		return 0, unpack.Stats{}, err
	}
	tree := unpack.NewSubtree(root, f.Limits, subdir)
	var (
		progress sync.Mutex // serializes Progress calls
		done     int64      // guarded by progress
	)
	total := img.Size()
	windows := newBudget(windowBudget)
	apply := func(ctx context.Context, i int, mode unpack.Mode) error {
		return f.layer(ctx, img, i, tree, mode, windows, func(n int64) {
			progress.Lock()
			defer progress.Unlock()
			done += n
			if f.Progress != nil {
				f.Progress(done, total)
			}
		})
	}
	if img.Labels[publish.LayoutLabel] == publish.LayoutDisjoint {
		err = parallel(ctx, largestFirst(img.Layers), layerJobs(), func(ctx context.Context, i int) error {
			return apply(ctx, i, unpack.Disjoint)
		})
	} else {
		for i := range img.Layers {
			if err = apply(ctx, i, unpack.Ordered); err != nil {
				break
			}
		}
	}
	if cerr := root.Close(); err == nil {
		err = cerr
	}
	// Every layer has returned, and with it every call of progress.
	progress.Lock()
	defer progress.Unlock()
	if err != nil {
		return done, unpack.Stats{}, fmt.Errorf("%s: %w", img.Ref, err)
	}
	return done, tree.Stats(), nil
}

// layer downloads, verifies, decompresses and applies layer i.
// Its decoder's window is taken from windows before it is decoded, and
// given back after.
func (f *Fetcher) layer(ctx context.Context, img *source.Image, i int, tree *unpack.Tree, mode unpack.Mode, windows *budget, progress func(int64)) error {
	l := img.Layers[i]
	rc, err := l.Open()
	if err != nil {
		return err
	}
	defer rc.Close()
	counted := &countingReader{r: rc, add: progress}
	dr, err := unpack.Decompress(counted, string(l.MediaType))
	if err != nil {
		return fmt.Errorf("layer %d (%s): %w", i, l.Digest, err)
	}
	granted, err := windows.acquire(ctx, dr.Window())
	if err == nil {
		defer windows.release(granted)
		if err = tree.Apply(ctx, i, dr, mode); err != nil {
			dr.Close()
			return fmt.Errorf("%s: %w", l.Digest, err) // err says "unpack layer <i>: ..."
		}
	}
	if err == nil {
		// Read to the very end: the digest is checked at EOF of the
		// compressed stream, which the tar reader alone may not reach.
		// What follows the tar's end (padding) is bounded: a small layer
		// must not decompress to gigabytes of nothing.
		var n int64
		n, err = io.Copy(io.Discard, io.LimitReader(dr, maxTrailing+1))
		if err == nil && n > maxTrailing {
			err = fmt.Errorf("more than %d bytes follow the end of its tar archive", maxTrailing)
		}
	}
	// Closing dr stops its read-ahead goroutines; only then is rc ours
	// to read again.
	if cerr := dr.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		_, err = io.Copy(io.Discard, counted)
	}
	if err != nil {
		return fmt.Errorf("layer %d (%s): %w", i, l.Digest, err)
	}
	return nil
}

// check reads the staged tree's modules and judges them against the
// target kernel.
func (f *Fetcher) check(st *store.Staging, t Target) (Fit, error) {
	tree := st.Tree(t.Driver, t.TreeName)
	fit := Judge(tree, t.Kernel, f.Modules)
	if !fit.Matches {
		return fit, fmt.Errorf("refuse tree for kernel %s: %s", t.Kernel.Release, fit.Problem)
	}
	return fit, nil
}

// maxTrailing bounds the decompressed bytes a layer may have after the
// end of its tar archive: tar pads to 10 KiB records, some writers to more.
const maxTrailing = 1 << 20

type countingReader struct {
	r   io.Reader
	add func(int64)
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.add(int64(n))
	}
	return n, err
}

// windowBudget bounds the decoder windows (see unpack.Stream.Window) of
// the layers unpacked at once. Images publish writes have 2 MiB windows,
// so four layers fit; images with zstd's common 8 MiB windows are
// unpacked two at a time, which keeps the daemon under 64 MiB too.
const windowBudget = 16 << 20

// budget hands out up to a total of units (bytes of memory) to
// goroutines, each waiting until its share is free.
type budget struct {
	mu    sync.Mutex
	total int64
	free  int64
	freed chan struct{} // closed, and replaced, when units are given back
}

func newBudget(total int64) *budget {
	return &budget{total: total, free: total, freed: make(chan struct{})}
}

// acquire waits until n units, or the whole budget if n is more, are
// free and takes them. It returns what it took, to give to release, or
// ctx's cause when ctx is done first.
func (b *budget) acquire(ctx context.Context, n int64) (int64, error) {
	n = min(max(n, 0), b.total)
	for {
		b.mu.Lock()
		if n <= b.free {
			b.free -= n
			b.mu.Unlock()
			return n, nil
		}
		freed := b.freed
		b.mu.Unlock()
		select {
		case <-freed:
		case <-ctx.Done():
			return 0, context.Cause(ctx)
		}
	}
}

// release gives back n units acquire took.
func (b *budget) release(n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.free += n
	close(b.freed)
	b.freed = make(chan struct{})
}

// maxLayerJobs bounds the layers unpacked at once, whatever the number of
// cores: each layer in flight holds its read-ahead buffers (see
// unpack.Decompress) besides its decoder's window, and the daemon should
// stay well under 64 MiB. Four layers keep four cores decoding, more than
// the disk usually absorbs anyway.
const maxLayerJobs = 4

// layerJobs is how many layers to unpack at once: one per core, at least
// two (one can download while another waits on the disk) and at most
// maxLayerJobs.
func layerJobs() int {
	return min(max(2, runtime.GOMAXPROCS(0)), maxLayerJobs)
}

// largestFirst returns the indexes of layers, largest first (ties in
// image order). Started in that order, the largest layer, which bounds
// how soon the last one ends, never waits behind small ones.
func largestFirst(layers []source.Layer) []int {
	order := make([]int, len(layers))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(layers[b].Size, layers[a].Size) })
	return order
}

// parallel runs fn for each index in order, starting them in that order,
// with at most jobs at once; the first error cancels the others and is
// returned.
func parallel(ctx context.Context, order []int, jobs int, fn func(context.Context, int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(max(jobs, 1), len(order)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := int(next.Add(1) - 1)
				if k >= len(order) || ctx.Err() != nil {
					return
				}
				if err := fn(ctx, order[k]); err != nil {
					cancel(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return context.Cause(ctx)
}
