package nextboot

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostfs"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostinfo"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// moduleDirs are where kernels keep their modules (host paths).
var moduleDirs = hostinfo.ModuleDirs

// bootDir holds vmlinuz-<release> on most distributions.
const bootDir = "/boot"

// depFile is written by depmod, the last step of a kernel's installation.
const depFile = "modules.dep"

// KernelWatcher reports kernel releases installed on a host. A release
// counts once lib/modules/<release>/modules.dep (or the same under
// usr/lib/modules) exists: depmod writes it when the kernel's package is
// complete, so a half-installed kernel is not reported.
type KernelWatcher struct {
	// Root is where the host is mounted; every path is resolved inside
	// it (hostfs).
	Root string
	// Since, when set, makes Watch also report releases complete at its
	// start whose modules.dep changed after Since (installed since boot,
	// before the watcher started). Zero reports only releases completed
	// later.
	Since time.Time
	// Rescan is how often the directories are read in full, catching what
	// inotify missed or could not watch; zero means 5 min.
	Rescan time.Duration
	// Log receives watch failures; nil logs nothing.
	Log *zap.Logger
}

// watched is what an inotify watch descriptor watches.
type watched struct {
	kind    int    // watchModules, watchRelease or watchBoot
	release string // for watchRelease
	dir     string // the real path watched
}

const (
	watchModules = iota // a modules directory: new releases appear here
	watchRelease        // lib/modules/<release>: modules.dep appears here
	watchBoot           // /boot: vmlinuz-<release> appears here
)

// kernelWatch is the state of one Watch.
type kernelWatch struct {
	w        *KernelWatcher
	fs       *hostfs.Root // the host tree; nil when it cannot be opened
	log      *zap.Logger
	fd       int               // inotify; -1 when unavailable
	wds      map[int32]watched // by watch descriptor
	dirs     map[string]bool   // real paths watched
	complete map[string]bool   // releases seen complete: reported, or known at start
	out      chan<- string
}

// event is one inotify event.
type event struct {
	wd   int32
	mask uint32
	name string
}

// Watch reports each kernel release that becomes complete after it starts
// (see Since), once: a release removed and installed again is not
// reported again, as its driver tree is in the store already. It watches the module directories and /boot with
// inotify and reads them in full every Rescan as well; without inotify the
// scans alone find new kernels. The channel is closed once ctx ends.
func (w *KernelWatcher) Watch(ctx context.Context) <-chan string {
	out := make(chan string, 8)
	k := &kernelWatch{w: w, log: w.Log, fd: -1, wds: map[int32]watched{}, dirs: map[string]bool{},
		complete: map[string]bool{}, out: out}
	if k.log == nil {
		k.log = zap.NewNop()
	}
	go func() {
		defer close(out)
		k.run(ctx)
	}()
	return out
}

func (k *kernelWatch) run(ctx context.Context) {
	fs, err := hostfs.Open(k.w.Root)
	if err != nil {
		k.log.Error("kernel watch: cannot open the host; not following new kernels", zap.Error(err))
		<-ctx.Done()
		return
	}
	defer fs.Close()
	k.fs = fs
	events := make(chan []event, 16)
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		k.log.Warn("kernel watch: no inotify; relying on periodic scans", zap.Error(err))
	} else {
		k.fd = fd
		// A non-blocking descriptor joins the runtime's poller, so Close
		// ends a Read in progress.
		f := os.NewFile(uintptr(fd), "inotify")
		defer f.Close()
		go readEvents(ctx, f, events)
	}

	k.addWatches()
	k.scan(ctx, true)
	every := k.w.Rescan
	if every <= 0 {
		every = 5 * time.Minute
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			k.addWatches()
			k.scan(ctx, false)
		case evs, ok := <-events:
			if !ok {
				k.log.Warn("kernel watch: inotify stopped; relying on periodic scans")
				events = nil
				continue
			}
			for _, ev := range evs {
				k.handle(ctx, ev)
			}
		}
	}
}

// readEvents reads inotify events from f until it is closed or ctx ends.
func readEvents(ctx context.Context, f *os.File, events chan<- []event) {
	defer close(events)
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	for {
		n, err := f.Read(buf)
		if err != nil {
			return
		}
		select {
		case events <- parseEvents(buf[:n]):
		case <-ctx.Done():
			return
		}
	}
}

// parseEvents splits a read of an inotify descriptor into events.
func parseEvents(b []byte) []event {
	var evs []event
	for len(b) >= unix.SizeofInotifyEvent {
		ev := event{
			wd:   int32(binary.NativeEndian.Uint32(b[0:4])),
			mask: binary.NativeEndian.Uint32(b[4:8]),
		}
		n := int(binary.NativeEndian.Uint32(b[12:16]))
		b = b[unix.SizeofInotifyEvent:]
		if n > len(b) {
			break
		}
		ev.name = strings.TrimRight(string(b[:n]), "\x00")
		b = b[n:]
		evs = append(evs, ev)
	}
	return evs
}

// handle acts on one event: a new release directory gets a watch of its
// own, and a modules.dep or vmlinuz written makes its release checked.
func (k *kernelWatch) handle(ctx context.Context, ev event) {
	if ev.mask&unix.IN_Q_OVERFLOW != 0 {
		k.scan(ctx, false)
		return
	}
	what, ok := k.wds[ev.wd]
	if !ok {
		return
	}
	if ev.mask&unix.IN_IGNORED != 0 {
		// The directory went away; watch it again should it come back.
		delete(k.wds, ev.wd)
		delete(k.dirs, what.dir)
		return
	}
	switch what.kind {
	case watchModules:
		if ev.mask&unix.IN_ISDIR != 0 && validRelease(ev.name) {
			k.watchRelease(ev.name)
			k.check(ctx, ev.name)
		}
	case watchRelease:
		if ev.name == depFile {
			k.check(ctx, what.release)
		}
	case watchBoot:
		if rel, ok := strings.CutPrefix(ev.name, "vmlinuz-"); ok && validRelease(rel) {
			k.check(ctx, rel)
		}
	}
}

// addWatches watches the module directories, each release directory in
// them, and /boot, where not watched yet.
func (k *kernelWatch) addWatches() {
	for _, d := range moduleDirs {
		k.watch(k.path(d), watched{kind: watchModules},
			unix.IN_CREATE|unix.IN_MOVED_TO|unix.IN_ONLYDIR)
		for _, rel := range k.releases(d) {
			k.watchRelease(rel)
		}
	}
	k.watch(k.path(bootDir), watched{kind: watchBoot},
		unix.IN_CREATE|unix.IN_MOVED_TO|unix.IN_CLOSE_WRITE|unix.IN_ONLYDIR)
}

// watchRelease watches the release's directories for modules.dep.
func (k *kernelWatch) watchRelease(rel string) {
	for _, d := range moduleDirs {
		k.watch(k.path(d, rel), watched{kind: watchRelease, release: rel},
			unix.IN_MOVED_TO|unix.IN_CLOSE_WRITE|unix.IN_ONLYDIR)
	}
}

// watch adds an inotify watch on dir unless it is missing or watched
// already (lib and usr/lib are often one directory).
func (k *kernelWatch) watch(dir string, what watched, mask uint32) {
	if k.fd < 0 {
		return
	}
	p := dir
	if p == "" || k.dirs[p] {
		return
	}
	wd, err := unix.InotifyAddWatch(k.fd, p, mask)
	if err != nil {
		if !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENOTDIR) {
			k.log.Warn("kernel watch: cannot watch", zap.String("dir", p), zap.Error(err))
		}
		return
	}
	k.dirs[p] = true
	if _, ok := k.wds[int32(wd)]; !ok {
		what.dir = p
		k.wds[int32(wd)] = what
	}
}

// releases lists the release directories in the module directory d.
func (k *kernelWatch) releases(d string) []string {
	entries, err := k.fs.ReadDir(d)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			k.log.Warn("kernel watch: cannot read", zap.String("dir", d), zap.Error(err))
		}
		return nil
	}
	var out []string
	for _, e := range entries {
		if e.IsDir() && validRelease(e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out
}

// scan reads every release. At the start, complete releases are only
// noted, except those changed after Since; later, a complete release not
// seen before is reported.
func (k *kernelWatch) scan(ctx context.Context, first bool) {
	for _, d := range moduleDirs {
		for _, rel := range k.releases(d) {
			mod, ok := k.depTime(rel)
			switch {
			case !ok || k.complete[rel]:
			case first && (k.w.Since.IsZero() || !mod.After(k.w.Since)):
				k.complete[rel] = true
			default:
				k.check(ctx, rel)
			}
		}
	}
}

// check reports rel if it is complete and was not before.
func (k *kernelWatch) check(ctx context.Context, rel string) {
	if k.complete[rel] {
		return
	}
	if _, ok := k.depTime(rel); !ok {
		return
	}
	k.complete[rel] = true
	k.log.Info("kernel installed", zap.String("release", rel))
	select {
	case k.out <- rel:
	case <-ctx.Done():
	}
}

// depTime returns when rel's modules.dep last changed, and whether it
// exists as a regular file.
func (k *kernelWatch) depTime(rel string) (time.Time, bool) {
	for _, d := range moduleDirs {
		fi, err := k.fs.Stat(path.Join(d, rel, depFile))
		if err == nil && fi.Mode().IsRegular() {
			return fi.ModTime(), true
		}
	}
	return time.Time{}, false
}

// path resolves the host path made of parts inside the host tree; "" when
// it cannot be resolved.
func (k *kernelWatch) path(parts ...string) string {
	p, err := k.fs.Path(path.Join(parts...))
	if err != nil {
		return ""
	}
	return p
}

// validRelease rejects names that are not a kernel release directory.
func validRelease(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsRune(name, '/')
}

// BootTime returns when the running kernel booted, from sysinfo(2)'s
// uptime.
func BootTime() (time.Time, error) {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return time.Time{}, fmt.Errorf("sysinfo: %w", err)
	}
	return time.Now().Add(-time.Duration(si.Uptime) * time.Second), nil
}
