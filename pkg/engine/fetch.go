package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
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
	// Progress, when set, is called as compressed bytes arrive, from
	// several goroutines at once.
	Progress func(done, total int64)
}

// Fetched describes a tree Fetch made available.
type Fetched struct {
	Tree   string // host path of the installed tree
	Image  string // reference with digest
	Digest string
	Reused bool  // an installed tree had the same digest: nothing downloaded
	Bytes  int64 // compressed bytes downloaded
}

// Fetch makes the tree for t available in the store: it resolves the
// image, refuses it before downloading anything when its labels name
// another driver, OS or kernel or its digest failed before, reuses an
// installed tree with the same digest, and otherwise streams the layers
// into a staging directory, checks every kernel module against t.Kernel
// and commits the tree. It never touches `current`. On error nothing but
// staging leftovers (removed here, or by the next Clean) remains.
func (f *Fetcher) Fetch(ctx context.Context, t Target) (Fetched, error) {
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
	out.Bytes, err = f.unpack(ctx, img, st, t.Subdir)
	if err != nil {
		return out, errors.Join(err, st.Discard())
	}
	fit, err := f.check(st, t)
	if err != nil {
		return out, errors.Join(err, st.Discard())
	}
	meta := store.Meta{Digest: out.Digest, Reference: img.Ref, Source: img.Source,
		InstalledAt: time.Now().UTC(), KernelRelease: t.Kernel.Release, Vermagic: fit.Vermagic}
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
func (f *Fetcher) unpack(ctx context.Context, img *source.Image, st *store.Staging, subdir string) (int64, error) {
	root, err := st.Root()
	if err != nil {
		return 0, err
	}
	tree := unpack.NewSubtree(root, f.Limits, subdir)
	var done atomic.Int64
	total := img.Size()
	apply := func(ctx context.Context, i int, mode unpack.Mode) error {
		return f.layer(ctx, img, i, tree, mode, func(n int64) {
			d := done.Add(n)
			if f.Progress != nil {
				f.Progress(d, total)
			}
		})
	}
	if img.Labels[publish.LayoutLabel] == publish.LayoutDisjoint {
		err = parallel(ctx, len(img.Layers), max(2, runtime.GOMAXPROCS(0)), func(ctx context.Context, i int) error {
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
	if err != nil {
		return done.Load(), fmt.Errorf("unpack %s: %w", img.Ref, err)
	}
	return done.Load(), nil
}

// layer downloads, verifies, decompresses and applies layer i.
func (f *Fetcher) layer(ctx context.Context, img *source.Image, i int, tree *unpack.Tree, mode unpack.Mode, progress func(int64)) error {
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
	err = tree.Apply(ctx, i, dr, mode)
	if err == nil {
		// Read to the very end: the digest is checked at EOF of the
		// compressed stream, which the tar reader alone may not reach.
		if _, err = io.Copy(io.Discard, dr); err == nil {
			_, err = io.Copy(io.Discard, counted)
		}
	}
	if cerr := dr.Close(); err == nil {
		err = cerr
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

// parallel runs fn for 0..n-1 with at most jobs at once; the first error
// cancels the others and is returned.
func parallel(ctx context.Context, n, jobs int, fn func(context.Context, int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sem := make(chan struct{}, jobs)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			defer func() { <-sem }()
			if err := fn(ctx, i); err != nil {
				cancel(err)
			}
		}()
	}
	wg.Wait()
	return context.Cause(ctx)
}
