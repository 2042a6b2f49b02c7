package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/nvidia-driverd/nvidia-driverd/pkg/atomicfile"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/cdi"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/hostinfo"
	"github.com/nvidia-driverd/nvidia-driverd/pkg/store"
)

func newCDICommand(g *globals) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "cdi",
		Short: "Print the CDI spec for the current tree",
		Long: `Print the Container Device Interface spec of the current tree: kind
nvidia.com/gpu, a device per GPU (by index, PCI address and UUID) and "all",
with the control nodes, read-only mounts of the driver's libraries under
` + cdi.ContainerLibDir + ` and its tools under ` + cdi.ContainerBinDir + `, and a
createContainer hook that adds the libraries to the container's linker cache.

Activation writes the same spec to <cdi-dir>/` + cdi.SpecFile + `; this command
is for looking at it, or writing it elsewhere with --output.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := g.cfg.Config
			h, err := hostinfo.Open(g.root)
			if err != nil {
				return err
			}
			defer h.Close()
			inv, err := store.Scan(h.FS(), cfg.Store)
			if err != nil {
				return err
			}
			if inv.Current == "" {
				msg := "nothing is current in " + cfg.Store + "; run install first"
				if len(inv.Problems) > 0 {
					msg += " (" + strings.Join(inv.Problems, "; ") + ")"
				}
				return errors.New(msg)
			}
			spec, err := cdi.Generate(cdi.Options{Host: h, Tree: inv.Current})
			if err != nil {
				return err
			}
			data, err := cdi.Encode(spec)
			if err != nil {
				return err
			}
			if output == "-" {
				_, err = g.stdout.Write(data)
				return err
			}
			if _, err := atomicfile.Replace(output, data, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "wrote %s\n", output)
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "-", "file to write the spec to, taken as given rather than under --root (replaced atomically); - for stdout")
	return cmd
}

func newCDIHookCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   cdi.HookCommand,
		Short: "Hooks container runtimes run for the CDI spec",
		Long: `Hooks named by the CDI spec nvidia-driverd writes; container runtimes run
them with the OCI state of the container on stdin. They read no
configuration.`,
		Args: cobra.NoArgs,
		// The hook runs with an empty environment and must not depend on
		// the host's configuration file.
		PersistentPreRunE: func(*cobra.Command, []string) error { return nil },
	}
	cmd.AddCommand(newUpdateLdcacheCommand())
	return cmd
}

func newUpdateLdcacheCommand() *cobra.Command {
	var folders []string
	cmd := &cobra.Command{
		Use:   cdi.LdcacheHook + " --folder DIR [--folder DIR...]",
		Short: "Add folders to the container's dynamic linker cache (createContainer hook)",
		Long: `Read the OCI state on stdin, find the container's root filesystem
through the bundle's config.json, write
` + cdi.LdconfigDropIn + ` there listing the folders
(container paths), and run the host's ldconfig -r on that root, which also
makes the libraries' SONAME links. Symlinks in the container cannot lead the
write outside its root.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(folders) == 0 {
				return usageError{errors.New("--folder is required")}
			}
			rootfs, err := cdi.ContainerRoot(cmd.InOrStdin())
			if err != nil {
				return err
			}
			return cdi.UpdateLdcache(rootfs, folders, "")
		},
	}
	cmd.Flags().StringArrayVar(&folders, "folder", nil, "container directory to add to the linker cache (repeatable)")
	return cmd
}
