// Package units holds the systemd units and system configuration files
// that run nvidia-driverd on a host, embedded so that the binary can put
// them in place itself (`nvidia-driverd install-units`).
package units

import "embed"

// Files are the unit files, by their path in this directory.
//
//go:embed nvidia-driverd.service nvidia-persistenced.service nvidia-driverd.sysusers nvidia-driverd.tmpfiles kubelet.service.d/10-nvidia-driverd.conf
var Files embed.FS

// File is one file to install: where it comes from in Files and where it
// goes on the host.
type File struct {
	Name string // path in Files
	Dest string // host path
	Mode uint32
}

// Layout says where each file goes on a host, in the admin's /etc (on
// Flatcar /usr is read-only).
var Layout = []File{
	{"nvidia-driverd.service", "/etc/systemd/system/nvidia-driverd.service", 0o644},
	{"nvidia-persistenced.service", "/etc/systemd/system/nvidia-persistenced.service", 0o644},
	{"kubelet.service.d/10-nvidia-driverd.conf", "/etc/systemd/system/kubelet.service.d/10-nvidia-driverd.conf", 0o644},
	{"nvidia-driverd.sysusers", "/etc/sysusers.d/nvidia-driverd.conf", 0o644},
	{"nvidia-driverd.tmpfiles", "/etc/tmpfiles.d/nvidia-driverd.conf", 0o644},
}
