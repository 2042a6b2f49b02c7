package hostinfo

import "testing"

func TestModuleSigning(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name, lockdown, sigEnforce, cmdline string // "" leaves the file out
		want                                bool
		why                                 string
	}{
		{name: "a kernel without lockdown or sig_enforce files does not enforce"},
		{name: "lockdown none does not enforce", lockdown: "[none] integrity confidentiality\n", sigEnforce: "N\n"},
		{name: "lockdown integrity enforces", lockdown: "none [integrity] confidentiality\n", want: true, why: "lockdown=integrity"},
		{name: "lockdown confidentiality enforces", lockdown: "none integrity [confidentiality]\n", want: true, why: "lockdown=confidentiality"},
		{name: "sig_enforce Y without the command line's word is the kernel's build", sigEnforce: "Y\n", want: true, why: "module.sig_enforce=Y, built into the kernel"},
		{name: "sig_enforce from the command line says so", sigEnforce: "Y\n", cmdline: "root=/dev/vda module.sig_enforce=1 quiet\n", want: true,
			why: "module.sig_enforce=Y, module.sig_enforce=1 on the kernel command line"},
		{name: "both reasons are given", lockdown: "none [integrity] confidentiality\n", sigEnforce: "Y\n", want: true, why: "lockdown=integrity, module.sig_enforce=Y, built into the kernel"},
	} {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			if c.lockdown != "" {
				writeTree(t, root, map[string]string{"sys/kernel/security/lockdown": c.lockdown})
			}
			if c.sigEnforce != "" {
				writeTree(t, root, map[string]string{"sys/module/module/parameters/sig_enforce": c.sigEnforce})
			}
			if c.cmdline != "" {
				writeTree(t, root, map[string]string{"proc/cmdline": c.cmdline})
			}
			h, err := Open(root)
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			if got, why := h.ModuleSigning(); got != c.want || why != c.why {
				t.Errorf("ModuleSigning = %v, %q; want %v, %q", got, why, c.want, c.why)
			}
		})
	}
}
