package main

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/atomicfile"
	units "github.com/nvidia-driverd/nvidia-driverd/systemd"
)

// BinaryPath is where the units expect the binary: /opt/bin is on PATH on
// Flatcar and writable there.
const BinaryPath = "/opt/bin/nvidia-driverd"

func newInstallUnitsCommand(g *globals) *cobra.Command {
	var withKubelet, copyBinary bool
	cmd := &cobra.Command{
		Use:   "install-units",
		Short: "Put the systemd units, sysusers and tmpfiles entries (and this binary) in place",
		Long: `Write nvidia-driverd.service, nvidia-persistenced.service, the kubelet
drop-in (After= + Requires= nvidia-driverd.service), and the sysusers.d and
tmpfiles.d entries under <root>/etc, and copy this binary to ` + BinaryPath + `.
Each file is replaced atomically and left alone when unchanged. Then run:

  systemd-sysusers && systemd-tmpfiles --create
  systemctl daemon-reload && systemctl enable --now nvidia-driverd`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, f := range units.Layout {
				if !withKubelet && filepath.Dir(f.Name) == "kubelet.service.d" {
					continue
				}
				data, err := units.Files.ReadFile(f.Name)
				if err != nil {
					return err
				}
				if err := g.installFile(f.Dest, data, fs.FileMode(f.Mode)); err != nil {
					return err
				}
			}
			if !copyBinary {
				return nil
			}
			self, err := os.Executable()
			if err != nil {
				return err
			}
			data, err := os.ReadFile(self)
			if err != nil {
				return err
			}
			return g.installFile(BinaryPath, data, 0o755)
		},
	}
	cmd.Flags().BoolVar(&withKubelet, "kubelet", true, "install the kubelet ordering drop-in")
	cmd.Flags().BoolVar(&copyBinary, "binary", true, "copy this binary to "+BinaryPath)
	return cmd
}

// installFile writes data to host path dest atomically, leaving an
// identical file alone, and says which it did.
func (g *globals) installFile(dest string, data []byte, mode fs.FileMode) error {
	p, err := hostPath(g.root, dest)
	if err != nil {
		return fmt.Errorf("install %s: %w", dest, err)
	}
	changed, err := atomicfile.Replace(p, data, mode)
	if err != nil {
		return fmt.Errorf("install %s: %w", dest, err)
	}
	if changed {
		fmt.Fprintf(g.stdout, "installed %s\n", dest)
	} else {
		fmt.Fprintf(g.stdout, "unchanged %s\n", dest)
	}
	return nil
}
