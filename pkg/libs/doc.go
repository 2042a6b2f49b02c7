// Package libs makes an installed NVIDIA driver tree's user-space side
// visible on the host: its libraries to the dynamic linker and its binaries
// on PATH. (Its firmware goes to the kernel's loader through package
// firmware.)
//
// Activate does it for one tree, Deactivate undoes it. Both converge: a
// rerun after a crash, or a second call, finishes or changes nothing, and
// the Result says what one call changed.
//
// # Two modes
//
// ModeOverlay, the original CoreOS installer's way and the default on hosts
// whose /usr is read-only (Flatcar), mounts a read-only overlay on
// /usr/lib64 whose top layer is the tree's lib64/ and whose bottom layer is
// the host's /usr/lib64, and another on /opt/bin over the tree's bin/:
//
//	mount -t overlay overlay -o ro,lowerdir=<tree>/lib64:/usr/lib64 /usr/lib64
//
// It has lower layers only, so nothing can write through it: the original
// mounted a writable upper directory inside the driver tree, which let any
// process write into the tree. No nosuid or nodev is added, since the
// overlay covers all of /usr/lib64, where hosts keep setuid helpers.
// lowerdir names the tree's real path, never <store>/current, so that a
// switch of `current` cannot change a mounted overlay behind our back.
//
// An overlay is busy as soon as a process maps a library through it, so a
// plain unmount fails. Activate therefore detaches the old overlay lazily
// (MNT_DETACH), then mounts the new one; processes already running keep the
// old view until they exit, new ones see the new tree. The detach comes
// first because the new overlay's bottom layer is the path of the mount
// point itself, which must name the host's directory, not our old overlay:
// overlays of ours are never stacked.
//
// An overlay is ours when its first lower layer lies inside the store,
// spelt as a host path (/opt/nvidia/..., as a run with root "/" mounts it)
// or as a path under the root (/rootfs/opt/nvidia/...).
// Mounts that are not ours are never unmounted: Activate mounts on top of
// them, and refuses to change an overlay of ours that another mount covers,
// since detaching a mount point detaches its topmost mount.
//
// ModeLdconfig, for hosts whose /usr is writable or not laid out as
// /usr/lib64, writes the drop-in /etc/ld.so.conf.d/nvidia-driverd.conf
// naming <tree>/lib64, the tree's real path. The drop-in names the tree
// rather than <store>/current so that the linker cache changes only when
// Activate runs, as in overlay mode; Activate runs on every switch. The
// drop-in is replaced atomically (temporary file in the same directory,
// fsync, rename, fsync of the directory) and left alone when its content
// is already right.
//
// Activate in one mode removes what the other mode left (the drop-in, or
// overlays of ours), so a change of mode converges too.
//
// # Linker cache
//
// Either way Activate then runs ldconfig and checks with ldconfig -p that
// every wanted SONAME (libcuda.so.1 and libnvidia-ml.so.1 by default)
// resolves into the tree's libraries: its first cache entry of its
// architecture lies in /usr/lib64 (overlay mode) or <tree>/lib64 (ldconfig
// mode). On a host mounted at a root other than "/", ldconfig runs with
// -r <root>, which chroots and so reads and writes only the host's files.
//
// # Paths
//
// Config.Store and Config.Tree are host paths; Config.Root is where the host
// is mounted in this mount namespace. Mounts are read from this namespace's
// /proc/self/mountinfo, since that is where mount(2) acts. Paths that go
// into mount options or the drop-in may not contain ':', ',', '\', white
// space or control characters: overlayfs and ld.so.conf give those meaning.
//
// The package logs nothing; what it did is in its return values.
package libs
