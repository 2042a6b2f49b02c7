package engine

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/cdi"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/config"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/firmware"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostinfo"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/kmod"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/libs"
)

// UnitControl starts and stops systemd units; *systemd.Units is the real
// one.
type UnitControl interface {
	Start(ctx context.Context, unit string) error
	Stop(ctx context.Context, unit string) error
}

// Activator turns an installed tree into a working driver on a host,
// through seams that tests replace: the module syscalls, mount(2), and
// systemd.
type Activator struct {
	Config   config.Config
	Syscalls kmod.Syscalls
	Mounter  libs.Mounter
	Units    UnitControl
	// Ldconfig overrides the ldconfig command line (tests use a private
	// cache); nil means the libs default.
	Ldconfig []string
	// Mountinfo overrides the mount table read; "" means the libs default.
	Mountinfo string
	// Observe, when set, hears each step start (err nil, done false) and
	// end (done true, with its error), for the journal.
	Observe func(step string, done bool, err error)
}

// step runs fn as the named step, telling Observe.
func (a *Activator) step(name string, fn func() error) error {
	if a.Observe != nil {
		a.Observe(name, false, nil)
	}
	err := fn()
	if a.Observe != nil {
		a.Observe(name, true, err)
	}
	return err
}

// Activation says what Activate did.
type Activation struct {
	Unloaded []string        // modules of another version removed first
	Modules  []kmod.Step     // modules in load order, with what was skipped
	Devices  []string        // device nodes created or fixed (removed, for Deactivate)
	Firmware firmware.Result // the firmware search path written or left
	Libs     libs.Result     // overlays, drop-in
	// CDI is the CDI spec written or removed, as a path in this
	// namespace; "" when it was left as it was or cdi-dir is empty.
	CDI string
	// CDIErr is why the CDI spec could not be written; the driver is
	// usable anyway.
	CDIErr error
	// PersistencedSkipped says why persistenced was not started, "" when
	// it was (or none is configured).
	PersistencedSkipped string
}

// ErrRebootNeeded is wrapped when another driver version is loaded and in
// use, so the new one cannot be loaded until the host reboots.
var ErrRebootNeeded = errors.New("reboot needed")

// LibraryMode resolves the library-mode setting for this host: overlay on
// Flatcar and CoreOS, whose /usr is read-only, the ld.so.conf.d drop-in
// elsewhere.
func LibraryMode(setting string, f Facts) libs.Mode {
	switch setting {
	case "overlay":
		return libs.ModeOverlay
	case "ldconfig":
		return libs.ModeLdconfig
	}
	switch f.OS.Family() {
	case hostinfo.FamilyFlatcar, hostinfo.FamilyCoreOS:
		return libs.ModeOverlay
	}
	return libs.ModeLdconfig
}

// Activate makes tree (a host path of an installed tree that matches the
// running kernel) the running driver. In order: when another version of
// the driver is loaded, persistenced is stopped and the old modules are
// unloaded (leaving everything as it was, with an error wrapping
// ErrRebootNeeded, when something holds the GPU); the firmware search path
// is pointed at the tree (before the modules: the GPU loads its firmware
// at probe); the libraries and binaries are switched; the modules are loaded in dependency order after the
// in-tree prerequisites; device nodes are created; the CDI spec for the
// tree is written to cdi-dir when that is set (removed when the host has
// no GPU node); persistenced is started. Each step is idempotent, so
// activating an active tree changes nothing. The error names the step.
func (a *Activator) Activate(ctx context.Context, h Host, f Facts, tree string) (Activation, error) {
	var out Activation
	cfg := a.Config
	loaded, driver := f.LoadedVersion(), filepath.Base(filepath.Dir(tree))
	// With no modules of ours (modules: []) a driver loaded by other means
	// is the host's, and stays.
	if loaded != "" && loaded != driver && len(cfg.Modules) > 0 {
		var err error
		out.Unloaded, err = a.unload(ctx, h, fmt.Sprintf("replace nvidia %s with %s", loaded, driver))
		if err != nil {
			return out, err
		}
	}

	err := a.step("firmware", func() error {
		var err error
		out.Firmware, err = firmware.Point(h.FS(), cfg.Store, tree)
		return err
	})
	if err != nil {
		return out, err
	}
	err = a.step("libraries", func() error {
		var err error
		out.Libs, err = libs.Activate(a.Mounter, libs.Config{
			FS: h.FS(), Store: cfg.Store, Tree: tree, Mode: LibraryMode(cfg.LibraryMode, f),
			Mountinfo: a.Mountinfo, Ldconfig: a.Ldconfig,
		})
		return err // libs names the tree
	})
	if err != nil {
		return out, err
	}

	fsTree, err := h.FS().Path(tree)
	if err != nil {
		return out, err
	}
	err = a.step("modules", func() error {
		var err error
		out.Modules, err = kmod.Load(a.Syscalls, kmod.Request{
			Host: h, Release: f.Kernel.Release, Flags: f.Kernel.Flags,
			TreeModules: filepath.Join(fsTree, "lib/modules", f.Kernel.Release),
			Modprobe:    filepath.Join(fsTree, "etc/modprobe.d"),
			Modules:     cfg.Modules, Params: cfg.ModuleParams,
		})
		if err != nil {
			return fmt.Errorf("load modules of %s: %w", tree, err)
		}
		return nil
	})
	if err != nil {
		return out, err
	}

	err = a.step("devices", func() error {
		gpus := make([]string, len(f.GPUs))
		for i, g := range f.GPUs {
			gpus[i] = g.Address
		}
		var err error
		out.Devices, err = kmod.Devices(h, gpus)
		return err // kmod says "create device node"
	})
	if err != nil {
		return out, err
	}
	if cfg.CDIDir != "" {
		// The spec serves containers; the driver is usable without it, so
		// a failure here is reported (Observe, CDIErr) but does not undo
		// the activation.
		out.CDIErr = a.step("cdi", func() error { return a.writeCDI(h, tree, &out) })
	}
	if cfg.Persistenced != "" && a.Units != nil {
		// persistenced needs the driver: with no nvidia module live (the
		// configuration loads none) it would only fail.
		m, ok, lerr := h.LoadedModule("nvidia")
		switch {
		case lerr != nil || !ok || m.InitState != "live":
			out.PersistencedSkipped = "the nvidia module is not loaded"
			return out, nil
		case len(cfg.Modules) == 0 && m.Version != driver:
			// modules: [] and the host's own driver of another version.
			out.PersistencedSkipped = "the nvidia module loaded is " + m.Version + ", not " + driver
			return out, nil
		}
		err = a.step("persistenced", func() error {
			if err := a.Units.Start(ctx, cfg.Persistenced); err != nil {
				return fmt.Errorf("start %s: %w", cfg.Persistenced, err)
			}
			return nil
		})
	}
	return out, err
}

// unload is the "unload" step: stop persistenced, then unload the
// driver's modules in reverse dependency order. what names the purpose in
// errors; a GPU still in use gives an error wrapping ErrRebootNeeded, with
// nothing unloaded.
func (a *Activator) unload(ctx context.Context, h Host, what string) ([]string, error) {
	var unloaded []string
	err := a.step("unload", func() error {
		if err := a.stopPersistenced(ctx); err != nil {
			return err
		}
		var err error
		unloaded, err = kmod.Unload(a.Syscalls, h, a.Config.Modules)
		if errors.Is(err, kmod.ErrBusy) && len(unloaded) == 0 {
			// Nothing was unloaded: the driver stays as it was, and so
			// does persistenced.
			err = fmt.Errorf("%s: %w: %w%s", what, ErrRebootNeeded, err, heldBy(h))
			if a.Config.Persistenced != "" && a.Units != nil {
				if serr := a.Units.Start(ctx, a.Config.Persistenced); serr != nil {
					err = errors.Join(err, fmt.Errorf("start %s again: %w", a.Config.Persistenced, serr))
				}
			}
			return err
		}
		// Busy after part of it went (a process opened the GPU meanwhile):
		// an ordinary failure, so that the caller restores the driver.
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	})
	return unloaded, err
}

// heldBy names the processes that keep the driver busy by holding one of
// its device files open, as "; <who> has /dev/nvidia0 open, ...", or ""
// when none is found (a module, not a process, holds it).
func heldBy(h Host) string {
	holders, err := h.DeviceHolders("/dev/nvidia")
	if err != nil || len(holders) == 0 {
		return ""
	}
	names := make([]string, len(holders))
	for i, d := range holders {
		names[i] = d.String()
	}
	return "; " + strings.Join(names, ", ")
}

func (a *Activator) stopPersistenced(ctx context.Context) error {
	if a.Config.Persistenced == "" || a.Units == nil {
		return nil
	}
	if err := a.Units.Stop(ctx, a.Config.Persistenced); err != nil {
		return fmt.Errorf("stop %s before replacing the driver: %w", a.Config.Persistenced, err)
	}
	return nil
}

// Deactivate undoes Activate: persistenced is stopped, the driver's
// modules are unloaded in reverse dependency order (nothing is unloaded,
// and the error wraps ErrRebootNeeded, when something holds the GPU), the
// device nodes are removed (Activation.Devices lists them), the CDI spec
// is removed from cdi-dir when that is set, and the overlays are detached
// or the ld.so.conf.d drop-in removed, with ldconfig rerun.
func (a *Activator) Deactivate(ctx context.Context, h Host) (Activation, error) {
	var out Activation
	cfg := a.Config
	if len(cfg.Modules) > 0 { // modules: [] loads none, so it unloads none
		var err error
		out.Unloaded, err = a.unload(ctx, h, "unload the driver")
		if err != nil {
			return out, err // the driver still runs: leave the rest in place
		}
		err = a.step("devices", func() error {
			var err error
			out.Devices, err = kmod.RemoveDevices(h)
			return err
		})
		if err != nil {
			return out, err
		}
	}
	// With the modules gone, the rest is taken down whatever fails on the
	// way, each failure reported.
	var errs []error
	if cfg.CDIDir != "" {
		errs = append(errs, a.step("cdi", func() error { return a.removeCDI(h, &out) }))
	}
	errs = append(errs, a.step("libraries", func() error {
		var err error
		out.Libs, err = libs.Deactivate(a.Mounter, libs.Config{
			FS: h.FS(), Store: cfg.Store, Mountinfo: a.Mountinfo, Ldconfig: a.Ldconfig,
		})
		return err
	}))
	return out, errors.Join(errs...)
}

// Undo takes back an activation that failed: Deactivate, then the host's
// own modules that act's load brought in for the driver (drm,
// drm_kms_helper, ...) are unloaded again when nothing else uses them, so
// a failed activation leaves the host as it found it. The Activation
// returned lists everything unloaded.
func (a *Activator) Undo(ctx context.Context, h Host, act Activation) (Activation, error) {
	out, err := a.Deactivate(ctx, h)
	if err != nil {
		return out, err
	}
	err = a.step("prerequisites", func() error {
		unloaded, err := kmod.UnloadLoadedFor(a.Syscalls, h, act.Modules)
		out.Unloaded = append(out.Unloaded, unloaded...)
		return err
	})
	return out, err
}

// writeCDI is the "cdi" step of Activate: it writes the CDI spec for tree,
// or removes a stale one when the host has no GPU node to offer.
func (a *Activator) writeCDI(h Host, tree string, out *Activation) error {
	spec, err := cdi.Generate(cdi.Options{Host: h, Tree: tree})
	if errors.Is(err, cdi.ErrNoGPU) {
		return a.removeCDI(h, out)
	}
	if err != nil {
		return err
	}
	p, changed, err := cdi.Write(h.FS(), a.Config.CDIDir, spec)
	if changed {
		out.CDI = p
	}
	return err
}

// removeCDI removes the CDI spec from cdi-dir.
func (a *Activator) removeCDI(h Host, out *Activation) error {
	p, removed, err := cdi.Remove(h.FS(), a.Config.CDIDir)
	if removed {
		out.CDI = p
	}
	return err
}
